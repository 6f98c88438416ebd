"""The OHIF viewer the broker serves: the pinned ``@ohif/app`` npm package, checked and unpacked.

Used by the dev stack's provisioning (``telerad stack provision``) and by the image build, which
runs this file on its own (standard library only)::

    python ohif_package.py /opt/telerad/viewer

fetches the tarball from the npm registry (``NPM_REGISTRY``, default the public one), checks its
sha512 against :data:`OHIF_INTEGRITY` (what the registry lists as ``dist.integrity``) and
unpacks only ``package/dist/``, without the files the broker never serves (its own
``index.html`` stays, the broker serves it per link). Nothing of OHIF is committed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path, PurePosixPath

__all__ = ["OHIF_INTEGRITY", "OHIF_VERSION", "PackageError", "integrity_of", "unpack_dist"]

OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5P"
    "Pe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
# Service workers would cache images on the reading workstation; the broker serves its own config.
NEVER_SERVED = frozenset({"sw.js", "service-worker.js", "init-service-worker.js", "app-config.js"})
_PREFIX = "package/dist/"


class PackageError(Exception):
    """The package is not the pinned one, or not shaped as expected."""


def integrity_of(path: Path) -> str:
    """The npm ``integrity`` string (Subresource Integrity, sha512) of a file."""
    digest = hashlib.sha512()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def unpack_dist(archive: Path, target: Path, *, expected: str = OHIF_INTEGRITY) -> Path:
    """Check ``archive`` against the pin (``expected``), then unpack its ``dist/`` into ``target``.

    Only regular files under ``package/dist/`` are written; a member whose path leaves the
    target is refused. ``target`` is replaced as a whole, never left half-written.
    """
    found = integrity_of(archive)
    if found != expected:
        raise PackageError(f"{archive.name} has integrity {found}, expected the pinned {expected}")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive, "r:gz") as tf:
        for member in tf:
            if not member.isfile() or not member.name.startswith(_PREFIX):
                continue
            relative = PurePosixPath(member.name[len(_PREFIX) :])
            if relative.is_absolute() or ".." in relative.parts or not relative.parts:
                raise PackageError(f"unsafe path in the tarball: {member.name}")
            if str(relative) in NEVER_SERVED:
                continue
            source = tf.extractfile(member)
            if source is None:
                continue
            destination = staging.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with source, destination.open("wb") as out:
                shutil.copyfileobj(source, out)
    if not (staging / "index.html").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise PackageError(f"{archive.name} has no package/dist/index.html")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def tarball_url(registry: str | None = None) -> str:
    """Where the registry keeps the pinned tarball."""
    base = (registry or os.environ.get("NPM_REGISTRY") or "https://registry.npmjs.org").rstrip("/")
    return f"{base}/@ohif/app/-/app-{OHIF_VERSION}.tgz"


def main(argv: list[str]) -> int:
    """Fetch, check and unpack into the directory given (the image build's step)."""
    if len(argv) != 2:
        print(f"usage: {argv[0]} TARGET_DIR", file=sys.stderr)
        return 2
    target = Path(argv[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = target.with_name(f"ohif-app-{OHIF_VERSION}.tgz")
    url = tarball_url()
    print(f"fetching {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=300) as answer, archive.open("wb") as out:  # noqa: S310
        shutil.copyfileobj(answer, out)
    try:
        unpack_dist(archive, target)
    except PackageError as exc:
        print(f"OHIF: {exc}", file=sys.stderr)
        return 1
    finally:
        archive.unlink(missing_ok=True)
    print(f"OHIF {OHIF_VERSION} unpacked into {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
