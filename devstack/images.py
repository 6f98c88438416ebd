"""Container images built here, from Debian packages and the cache, for an engine with no registry.

* The **base**: a Debian bookworm root filesystem made with ``debootstrap`` from Debian's archive
  (Debian's ``python3``, 3.11, with ``python3-venv``), cached as a tarball under
  ``<cache>/images/``, loaded with ``docker import``, then given this machine's extra CA
  certificates (``/usr/local/share/ca-certificates``: builds go out through the same egress as
  the host). The broker's ``Dockerfile`` builds ``FROM`` it with ``--build-arg BASE=...``.
* The **stack's parts** (``devstack/resources/images/*.Dockerfile``), each ``FROM`` the base:
  Kafka (Debian's JRE 17, the jars resolved from Maven Central), OPA (the binary built from the
  Go module proxy), Keycloak (its Maven Central distribution, and the JDK >= 21 the process
  backend runs it on, since bookworm has none), Orthanc (Debian's ``orthanc`` and
  ``orthanc-dicomweb``).

Images are tagged by a digest of what went into them, so a build is skipped when its tag exists.

**Which images** (``TELERAD_STACK_IMAGES``): ``public`` pulls the projects' own images
(:data:`PUBLIC_IMAGES`, the versions the process backend runs) and builds here only a part whose
pull fails; ``local`` builds every part here. The default is ``public``, except with
``TELERAD_STACK_REQUIRE_ENGINE=1`` (CI: no registry), where it is ``local``.
``TELERAD_STACK_IMAGE_<PART>`` still names one image for one part, whatever the choice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devstack import provision
from devstack._procs import progress

__all__ = [
    "BASE_PACKAGES",
    "PUBLIC_IMAGES",
    "ImageBuildError",
    "Images",
    "base_rootfs",
    "image_source",
    "is_public",
]

# The projects' own images, at the versions the cache holds for the process backend. OPA's
# image has no shell and its binary at /opa; Orthanc's keeps its plugins elsewhere than Debian:
# the container backend asks :func:`is_public` and adapts the command line.
PUBLIC_IMAGES = {
    "kafka": f"apache/kafka:{provision.KAFKA_VERSION}",
    "opa": f"openpolicyagent/opa:{provision.OPA_VERSION.removeprefix('v')}",
    "keycloak": f"quay.io/keycloak/keycloak:{provision.KEYCLOAK_VERSION}",
    "orthanc": "orthancteam/orthanc:24.12.1",
}
# where those images keep what the commands name (ours: on PATH, Debian's paths)
PUBLIC_OPA = "/opa"
PUBLIC_ORTHANC_DICOMWEB = "/usr/share/orthanc/plugins-available/libOrthancDicomWeb.so"


def image_source(environ: Mapping[str, str] | None = None) -> str:
    """``public`` or ``local``: ``TELERAD_STACK_IMAGES``, else local only where CI says
    there is no registry (``TELERAD_STACK_REQUIRE_ENGINE=1``)."""
    env = os.environ if environ is None else environ
    chosen = env.get("TELERAD_STACK_IMAGES", "").strip().lower()
    if chosen in ("public", "local"):
        return chosen
    if chosen:
        raise ValueError(f"TELERAD_STACK_IMAGES={chosen!r}: say public or local")
    return "local" if env.get("TELERAD_STACK_REQUIRE_ENGINE") == "1" else "public"


def is_public(image: str) -> bool:
    """Whether ``image`` is one of :data:`PUBLIC_IMAGES` (whose layout differs from ours)."""
    return image in PUBLIC_IMAGES.values()


SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What python:3.11-slim-bookworm gives the broker's Dockerfile: python (3.11), venv with pip.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
_IMAGES = Path(__file__).parent / "resources" / "images"


class ImageBuildError(RuntimeError):
    """An image did not build; the message carries the tail of the build's output."""


def _digest(*parts: str | bytes | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            if part.is_dir():
                for item in sorted(p for p in part.rglob("*") if p.is_file()):
                    h.update(str(item.relative_to(part)).encode())
                    h.update(item.read_bytes())
            else:
                h.update(part.read_bytes())
        else:
            h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def base_rootfs() -> Path:
    """The cached bookworm root filesystem tarball, made with debootstrap if missing."""
    key = _digest(SUITE, MIRROR, *BASE_PACKAGES)
    images = provision.cache_dir() / "images"
    tarball = images / f"rootfs-{SUITE}-python3-{key}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("the base image needs debootstrap (apt-get install debootstrap)")
    staging = images / f"rootfs-{SUITE}-{key}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    images.mkdir(parents=True, exist_ok=True)
    progress(f"debootstrap: a {SUITE} root filesystem from {MIRROR} (about a minute)")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            SUITE,
            str(staging),
            MIRROR,
        ],
        what="debootstrap",
    )
    _tidy_rootfs(staging)
    partial = tarball.with_name(tarball.name + ".partial")
    _run(["tar", "-C", str(staging), "--numeric-owner", "-cf", str(partial), "."], what="tar")
    partial.rename(tarball)
    shutil.rmtree(staging, ignore_errors=True)
    return tarball


def _tidy_rootfs(root: Path) -> None:
    """What the official Debian images do: no package caches, no services started by apt."""
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (root / cache).glob("*"):
            if item.is_file():
                item.unlink()
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# no daemons started by package installs in images\nexit 101\n")
    policy.chmod(0o755)
    (root / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
    )


def _run(argv: list[str], *, what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImageBuildError(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")


class Images:
    """Builds (or finds) the local images on one engine, named ``telerad-local/<part>:<key>``."""

    def __init__(self, host: str) -> None:
        import docker

        self.client: Any = docker.DockerClient(base_url=host, timeout=600)

    def close(self) -> None:
        self.client.close()

    def _exists(self, tag: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            return False
        return True

    def _pull(self, image: str) -> bool:
        """Pull ``image`` (or find it here); False, saying why, when no registry gives it."""
        import docker.errors

        if self._exists(image):
            return True
        progress(f"docker pull {image}")
        try:
            self.client.images.pull(image)
        except docker.errors.DockerException as exc:
            progress(f"cannot pull {image} ({type(exc).__name__}): building the part here")
            return False
        return True

    def base(self) -> str:
        """The local base image (debootstrap rootfs + this machine's extra CA certificates)."""
        rootfs = base_rootfs()
        raw = f"telerad-local/rootfs:{rootfs.stem.rsplit('-', 1)[1]}"
        if not self._exists(raw):
            progress(f"docker import {rootfs.name} as {raw}")
            repository, tag = raw.split(":")
            self.client.api.import_image_from_file(str(rootfs), repository=repository, tag=tag)
        cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        with _context({f"ca/{p.name}": p for p in cas}) as ctx:
            (ctx / "ca").mkdir(exist_ok=True)
            return self._build(
                "base", ctx, _IMAGES / "base.Dockerfile", {"ROOTFS": raw}, key=[raw, *cas]
            )

    def part(self, name: str) -> str:
        """The image of a stack part: ``kafka``, ``opa``, ``keycloak`` or ``orthanc``."""
        override = os.environ.get(f"TELERAD_STACK_IMAGE_{name.upper()}")
        if override:
            return override
        public = PUBLIC_IMAGES.get(name)
        if public is not None and image_source() == "public":
            if self._pull(public):
                return public
        base = self.base()
        files: dict[str, Path] = {}
        if name == "kafka":
            files["libs"] = Path(provision.kafka_classpath().removesuffix("/*"))
        elif name == "opa":
            files["opa"] = provision.go_tool("opa")
        elif name == "keycloak":
            files["keycloak"] = provision.keycloak_home()
            files["jdk"] = Path(provision.java_home(21))
        elif name != "orthanc":
            raise ValueError(f"unknown stack part {name!r}")
        with _context(files) as ctx:
            # the key names inputs by path and version (the cache's own keys), not by content:
            # hashing a JDK and a Keycloak distribution on every run costs more than it saves
            key = [base, *(f"{k}={v}" for k, v in sorted(files.items()))]
            return self._build(name, ctx, _IMAGES / f"{name}.Dockerfile", {"BASE": base}, key=key)

    def _build(
        self,
        name: str,
        context: Path,
        dockerfile: Path,
        args: Mapping[str, str],
        *,
        key: list[Any],
    ) -> str:
        tag = f"telerad-local/{name}:{_digest(dockerfile, *map(str, key))}"
        if self._exists(tag):
            return tag
        shutil.copy(dockerfile, context / "Dockerfile")
        progress(f"docker build {tag}")
        build(self.client, context, tag, args)
        return tag


def build(client: Any, context: Path, tag: str, args: Mapping[str, str]) -> None:
    """``docker build`` (the engine's classic builder) on the host network; errors with the log."""
    output: list[str] = []
    for chunk in client.api.build(
        path=str(context),
        tag=tag,
        buildargs=dict(args),
        network_mode="host",
        rm=True,
        forcerm=True,
        decode=True,
    ):
        if "stream" in chunk:
            output.append(chunk["stream"])
        if "error" in chunk:
            tail = "".join(output)[-3000:]
            raise ImageBuildError(f"docker build {tag}: {chunk['error']}\n{tail}")


@contextmanager
def _context(files: Mapping[str, Path]) -> Iterator[Path]:
    """A build context directory holding ``files`` (hard links where the file system allows)."""
    with tempfile.TemporaryDirectory(prefix="telerad-image-") as tmp:
        root = Path(tmp)
        for name, source in files.items():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, copy_function=_link_or_copy)  # links followed
            else:
                _link_or_copy(str(source), str(target))
        yield root


def _link_or_copy(source: str, target: str) -> None:
    source = os.path.realpath(source)  # a JDK's cacerts links to the host's /etc/ssl/certs/java
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
