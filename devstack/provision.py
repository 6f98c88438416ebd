"""Fetch and build the dev/test stack's parts from the registries this machine reaches.

Everything lands in the cache (``$TELERAD_CACHE``, default ``~/.cache/telerad``) and is reused;
a missing cache only costs time. Each step prints progress, because a cold machine spends minutes
here: Go builds (OPA, Regal, Helm) from the Go module proxy, Kafka and Keycloak from Maven
Central, the OHIF viewer's prebuilt ``dist/`` from npm, Orthanc, Chromium, ``dockerd`` and
``debootstrap`` from Debian (the container images' root filesystem is made later, on first use,
by :mod:`devstack.images`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from broker.pages.ohif_package import (
    OHIF_INTEGRITY,
    OHIF_VERSION,
    PackageError,
    integrity_of,
    unpack_dist,
)
from devstack._procs import progress

__all__ = [
    "HELM_VERSION",
    "KAFKA_VERSION",
    "KEYCLOAK_VERSION",
    "OHIF_VERSION",
    "OPA_VERSION",
    "REGAL_VERSION",
    "ProvisionError",
    "cache_dir",
    "chromium_binary",
    "container_tools",
    "debian_packages",
    "ensure_all",
    "go_tool",
    "kafka_classpath",
    "keycloak_home",
    "ohif_dist",
    "orthanc_binary",
    "orthanc_openssl3_shim",
]

# Pinned versions (bump deliberately; each one is a cache key).
OPA_VERSION = "v1.22.3"
REGAL_VERSION = "v0.39.0"
HELM_VERSION = "v3.19.0"
KAFKA_VERSION = "4.1.1"
KEYCLOAK_VERSION = "26.4.7"
# name -> (module, package inside the module, version, version-stamping ldflags variable)
_GO_TOOLS: dict[str, tuple[str, str, str, str | None]] = {
    "opa": ("github.com/open-policy-agent/opa", ".", OPA_VERSION, None),
    # The proxy serves Regal's module but not its version list, which `go install pkg@v` asks
    # for; so Regal (like the others) is built from the downloaded module.
    "regal": (
        "github.com/open-policy-agent/regal",
        ".",
        REGAL_VERSION,
        "github.com/open-policy-agent/regal/pkg/version.Version",
    ),
    "helm": (
        "helm.sh/helm/v3",
        "./cmd/helm",
        HELM_VERSION,
        "helm.sh/helm/v3/internal/version.version",
    ),
}


class ProvisionError(RuntimeError):
    """A stack part could not be fetched or built; the message says which and why."""


def cache_dir() -> Path:
    """The cache root; created on first use."""
    root = Path(os.environ.get("TELERAD_CACHE", Path.home() / ".cache" / "telerad"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _resource(name: str) -> Path:
    return Path(__file__).parent / "resources" / name


def _run(argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None) -> None:
    """Run a fetch/build command, relaying its output and a heartbeat so long work shows life."""
    progress(f"{what}: {' '.join(argv[:3])} ...")
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(20):
            progress(f"{what}: still working ({time.monotonic() - started:.0f} s)")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        proc = subprocess.run(
            list(argv),
            env=dict(os.environ) | dict(env or {}),
            stdin=subprocess.DEVNULL,
            stdout=sys.stderr,
            stderr=subprocess.STDOUT,
            check=False,
        )
    finally:
        done.set()
    if proc.returncode != 0:
        raise ProvisionError(f"{what} failed (exit {proc.returncode}); see the output above")
    progress(f"{what}: done in {time.monotonic() - started:.0f} s")


def go_tool(name: str) -> Path:
    """A pinned Go tool (``opa``, ``regal``, ``helm``), built from the Go module proxy if absent."""
    module, package, version, version_var = _GO_TOOLS[name]
    target = cache_dir() / "bin" / f"{name}-{version}"
    if target.exists():
        return target
    if shutil.which("go") is None:
        raise ProvisionError(f"{name}: the Go toolchain is needed to build it and is not on PATH")
    gopath = cache_dir() / "go"
    env = {"GOPATH": str(gopath), "GOFLAGS": "-modcacherw -buildvcs=false", "CGO_ENABLED": "0"}
    what = f"building {name} {version}"
    _run(["go", "mod", "download", f"{module}@{version}"], what=f"{what} (download)", env=env)
    source = gopath / "pkg" / "mod" / _escape_module(f"{module}@{version}")
    ldflags = "-s -w" + (f" -X {version_var}={version}" if version_var else "")
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    _run(
        ["go", "build", "-C", str(source), "-o", str(partial), "-ldflags", ldflags, package],
        what=f"{what} (compile; a few minutes on two cores)",
        env=env,
    )
    partial.rename(target)
    return target


def _escape_module(path: str) -> str:
    """The module cache's case-encoding: an upper-case letter becomes '!' + lower case."""
    return "".join(f"!{c.lower()}" if c.isupper() else c for c in path)


def _mvn(args: Sequence[str], *, what: str) -> None:
    if shutil.which("mvn") is None:
        raise ProvisionError(f"{what}: Maven (mvn) is needed and is not on PATH")
    repo = os.environ.get("TELERAD_M2_REPO")  # default: the user's ~/.m2, shared with other builds
    extra = [f"-Dmaven.repo.local={repo}"] if repo else []
    _run(["mvn", "-B", "-ntp", *extra, *args], what=what)


def kafka_classpath() -> str:
    """Classpath of a Kafka (KRaft) runtime resolved from Maven Central."""
    libs = cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / ".complete"
    if not marker.exists():
        shutil.rmtree(libs, ignore_errors=True)
        _mvn(
            [
                "-f",
                str(_resource("kafka-pom.xml")),
                f"-Dkafka.version={KAFKA_VERSION}",
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={libs}",
            ],
            what=f"fetching Kafka {KAFKA_VERSION} from Maven Central",
        )
        marker.touch()
    return str(libs / "*")


def keycloak_home() -> Path:
    """An unpacked Keycloak server distribution from Maven Central."""
    home = cache_dir() / f"keycloak-{KEYCLOAK_VERSION}"
    marker = home / ".complete"
    if marker.exists():
        return home
    downloads = cache_dir() / "downloads"
    archive = downloads / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
    if not archive.exists():
        _mvn(
            [
                "dependency:copy",
                f"-Dartifact=org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip",
                f"-DoutputDirectory={downloads}",
            ],
            what=f"fetching Keycloak {KEYCLOAK_VERSION} from Maven Central",
        )
    progress(f"unpacking {archive.name}")
    staging = home.with_name(home.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(staging)
    (inner,) = [p for p in staging.iterdir() if p.is_dir()]
    shutil.rmtree(home, ignore_errors=True)
    inner.rename(home)
    shutil.rmtree(staging, ignore_errors=True)
    for script in (home / "bin").glob("*.sh"):
        script.chmod(0o755)
    marker.touch()
    return home


def orthanc_binary() -> Path:
    """The Orthanc server with its DICOMweb plugin, installed from Debian if missing."""
    found = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
    if found and plugin.exists():
        return Path(found)
    _apt_install(
        ["orthanc", "orthanc-dicomweb"],
        what="installing Orthanc and its DICOMweb plugin from Debian",
    )
    found = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(found).exists() or not plugin.exists():
        raise ProvisionError(
            "Orthanc: installed from Debian but the binary or DICOMweb plugin is missing"
        )
    return Path(found)


_OPENSSL_3 = ("-l:libssl.so.3", "-l:libcrypto.so.3")


def orthanc_openssl3_shim() -> Path:
    """A ``libssl.so`` that lets Debian's civetweb (Orthanc's HTTP server) serve HTTPS on
    OpenSSL 3; built once into the cache with the system's C compiler (see the C file's note)."""
    source = Path(__file__).parent / "resources" / "orthanc" / "civetweb-openssl3.c"
    target = cache_dir() / "orthanc-openssl3-shim" / "libssl.so"
    stamp = target.with_suffix(".sha256")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if target.exists() and stamp.exists() and stamp.read_text() == digest:
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ProvisionError(
            "Orthanc over HTTPS needs a C compiler for its OpenSSL 3 shim (apt-get install gcc); "
            "or run the stack's Orthanc over plain HTTP with TELERAD_STACK_ORTHANC_PLAINTEXT=1"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    _run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(partial), str(source), *_OPENSSL_3],
        what="building the OpenSSL 3 shim for Orthanc's HTTPS",
    )
    partial.replace(target)
    stamp.write_text(digest)
    return target


def _apt_install(packages: Sequence[str], *, what: str) -> None:
    """Install Debian packages with apt-get, as root or through password-less sudo."""
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    _run([*sudo, "apt-get", "update", "-q"], what="updating Debian package lists", env=env)
    _run(
        [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        what=what,
        env=env,
    )


def chromium_binary() -> Path:
    """Debian's Chromium (the browser the viewer's end-to-end tests drive), installed if missing."""
    binary = Path("/usr/bin/chromium")
    if binary.exists():
        return binary
    _apt_install(["chromium"], what="installing Chromium from Debian")
    if not binary.exists():
        raise ProvisionError(f"Chromium: installed from Debian but {binary} is missing")
    return binary


def container_tools() -> None:
    """Debian's ``dockerd`` (package ``docker.io``) and ``debootstrap``, installed if missing.

    The container tests start a private engine with them where none answers and build every
    image from a debootstrap root filesystem (:mod:`devstack.engine`, :mod:`~.images`).
    """
    missing = [
        package
        for package, binary in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"))
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists()
    ]
    if missing:
        _apt_install(missing, what=f"installing {' and '.join(missing)} from Debian")


def ohif_dist(cache: Path | None = None) -> Path:
    """The OHIF viewer's prebuilt ``dist/`` from the pinned npm tarball, unpacked in the cache.

    The tarball is fetched with ``npm pack`` (so the user's npm registry settings apply), then
    checked and unpacked by :mod:`broker.pages.ohif_package` (the image build does the same)
    into ``<cache>/ohif-<version>/dist``.
    """
    root = cache if cache is not None else cache_dir()
    home = root / f"ohif-{OHIF_VERSION}"
    dist = home / "dist"
    marker = home / ".complete"
    if marker.exists() and (dist / "index.html").exists():
        return dist
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / f"ohif-app-{OHIF_VERSION}.tgz"
    if not archive.exists() or integrity_of(archive) != OHIF_INTEGRITY:
        if shutil.which("npm") is None:
            raise ProvisionError("OHIF: npm is needed to fetch the viewer and is not on PATH")
        archive.unlink(missing_ok=True)
        _run(
            [
                "npm",
                "pack",
                f"@ohif/app@{OHIF_VERSION}",
                "--pack-destination",
                str(downloads),
                "--loglevel=warn",
            ],
            what=f"fetching the OHIF viewer {OHIF_VERSION} from npm",
        )
        if not archive.exists():
            raise ProvisionError(f"OHIF: npm pack did not write {archive}")
    progress(f"checking and unpacking the viewer's dist/ from {archive.name}")
    home.mkdir(parents=True, exist_ok=True)
    try:
        unpack_dist(archive, dist)
    except PackageError as exc:
        archive.unlink(missing_ok=True)
        raise ProvisionError(f"OHIF: {exc}") from None
    marker.touch()
    return dist


def orthanc_dicomweb_plugin() -> Path:
    """The DICOMweb plugin shared object Debian installs beside Orthanc."""
    return Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def java_home(min_version: int) -> str:
    """A JDK of at least ``min_version``: $JAVA_HOME, then the JDKs under /usr/lib/jvm."""
    preferred = os.environ.get("JAVA_HOME", "")
    if preferred and _java_major(Path(preferred)) >= min_version:
        return preferred
    jvm = Path("/usr/lib/jvm")
    found = sorted(
        (major, str(p))
        for p in (jvm.iterdir() if jvm.is_dir() else [])
        if (major := _java_major(p)) >= min_version and not p.is_symlink()
    )
    if found:
        return found[0][1]  # the oldest JDK that is new enough: what the service is tested on
    raise ProvisionError(f"no JDK >= {min_version} found (set JAVA_HOME)")


def _java_major(home: Path) -> int:
    release = home / "release"
    if not release.exists() or not (home / "bin" / "java").exists():
        return 0
    for line in release.read_text().splitlines():
        if line.startswith("JAVA_VERSION="):
            version = line.split("=", 1)[1].strip('"')
            head = version.split(".")[0]
            return int(head) if head.isdigit() else 0
    return 0


def ensure_all(*, tools: Sequence[str] = ("opa",)) -> None:
    """Provision every part of the stack (and the named Go tools) so later starts are quick.

    Three kinds of work run side by side, since they wait on different things: the Debian
    packages (one ``apt-get`` run for all that are missing), the Go builds (CPU) and the
    downloads from Maven Central and npm (network). The first failure is raised once all three
    have stopped; what finished stays in the cache.
    """
    jobs: dict[str, Callable[[], object]] = {
        "Debian packages": debian_packages,
        "Go tools": lambda: [go_tool(name) for name in tools],
        "Maven Central and npm": lambda: (kafka_classpath(), keycloak_home(), ohif_dist()),
    }
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="provision") as pool:
        running = {name: pool.submit(job) for name, job in jobs.items()}
    failures = [(name, exc) for name, f in running.items() if (exc := f.exception()) is not None]
    for name, exc in failures[1:]:
        progress(f"provisioning ({name}) failed too: {exc}")
    if failures:
        raise failures[0][1]
    orthanc_binary()
    orthanc_openssl3_shim()
    chromium_binary()
    container_tools()


def _missing_debian_packages() -> list[str]:
    """The Debian packages the stack needs that this machine lacks."""

    def present(*paths: str) -> bool:
        return any(Path(p).exists() or shutil.which(Path(p).name) for p in paths)

    wanted = {
        "orthanc": present("/usr/sbin/Orthanc"),
        "orthanc-dicomweb": Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists(),
        "chromium": Path("/usr/bin/chromium").exists(),
        "docker.io": present("/usr/sbin/dockerd"),
        "debootstrap": present("/usr/sbin/debootstrap"),
        "gcc": bool(shutil.which("cc") or shutil.which("gcc")),  # Orthanc's OpenSSL 3 shim
    }
    return [package for package, found in wanted.items() if not found]


def debian_packages() -> None:
    """Install every missing Debian package the stack needs in one ``apt-get`` run."""
    missing = _missing_debian_packages()
    if missing:
        _apt_install(missing, what=f"installing {', '.join(missing)} from Debian")
