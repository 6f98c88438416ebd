"""Unpacking the OHIF package: only the pinned tarball, only dist/, nothing outside the target."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from broker.pages.ohif_package import PackageError, integrity_of, tarball_url, unpack_dist


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_only_dist_is_unpacked_without_service_workers(tmp_path: Path) -> None:
    archive = _tarball(
        tmp_path / "app.tgz",
        {
            "package/package.json": b"{}",
            "package/dist/index.html": b"<!doctype html>",
            "package/dist/app.bundle.js": b"bundle",
            "package/dist/assets/icon.png": b"png",
            "package/dist/sw.js": b"worker",
            "package/dist/init-service-worker.js": b"register",
            "package/dist/app-config.js": b"window.config = {url: 'https://elsewhere'}",
        },
    )
    target = unpack_dist(archive, tmp_path / "dist", expected=integrity_of(archive))
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert found == ["app.bundle.js", "assets/icon.png", "index.html"]
    assert not (tmp_path / "dist.partial").exists()


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path: Path) -> None:
    archive = _tarball(tmp_path / "app.tgz", {"package/dist/index.html": b"x"})
    with pytest.raises(PackageError, match="expected the pinned"):
        unpack_dist(archive, tmp_path / "dist")  # the real pin
    assert not (tmp_path / "dist").exists()


@pytest.mark.parametrize("name", ["package/dist/../../evil.js", "package/dist//etc/passwd"])
def test_paths_leaving_the_target_are_refused(tmp_path: Path, name: str) -> None:
    archive = _tarball(tmp_path / "app.tgz", {"package/dist/index.html": b"x", name: b"evil"})
    with pytest.raises(PackageError, match="unsafe path"):
        unpack_dist(archive, tmp_path / "dist", expected=integrity_of(archive))
    assert not (tmp_path / "evil.js").exists() and not (tmp_path / "dist").exists()


def test_a_package_without_index_html_is_refused_and_the_old_dist_kept(tmp_path: Path) -> None:
    old = tmp_path / "dist"
    old.mkdir()
    (old / "index.html").write_text("old")
    archive = _tarball(tmp_path / "app.tgz", {"package/dist/app.bundle.js": b"x"})
    with pytest.raises(PackageError, match=r"no package/dist/index\.html"):
        unpack_dist(archive, old, expected=integrity_of(archive))
    assert (old / "index.html").read_text() == "old"


def test_the_tarball_url_follows_the_registry() -> None:
    assert tarball_url("https://npm.example/") == "https://npm.example/@ohif/app/-/app-3.13.2.tgz"
