"""Build contexts and root filesystem tidying for the locally built images (no engine needed)."""

from __future__ import annotations

from pathlib import Path

from devstack import images


class TestContext:
    def test_links_out_of_the_tree_become_files(self, tmp_path: Path) -> None:
        # A Debian-packaged JDK's lib/security/cacerts links to /etc/ssl/certs/java/cacerts,
        # which the image does not have: the context must carry the file, not the link.
        outside = tmp_path / "outside.txt"
        outside.write_text("trust store")
        tree = tmp_path / "jdk" / "lib" / "security"
        tree.mkdir(parents=True)
        (tree / "cacerts").symlink_to(outside)
        with images._context({"jdk": tmp_path / "jdk", "one": outside}) as ctx:
            copied = ctx / "jdk" / "lib" / "security" / "cacerts"
            assert not copied.is_symlink()
            assert copied.read_text() == "trust store"
            assert (ctx / "one").read_text() == "trust store"
        assert not ctx.exists()

    def test_digest_follows_content(self, tmp_path: Path) -> None:
        file = tmp_path / "Dockerfile"
        file.write_text("FROM a")
        first = images._digest(file, "x")
        assert images._digest(file, "x") == first
        file.write_text("FROM b")
        assert images._digest(file, "x") != first


class TestTidyRootfs:
    def test_no_package_caches_and_no_daemons_started(self, tmp_path: Path) -> None:
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            (tmp_path / cache).mkdir(parents=True)
            (tmp_path / cache / "x.deb").write_text("deb")
        (tmp_path / "usr/sbin").mkdir(parents=True)
        (tmp_path / "etc/apt").mkdir(parents=True)
        images._tidy_rootfs(tmp_path)
        assert not list((tmp_path / "var/cache/apt/archives").iterdir())
        assert not list((tmp_path / "var/lib/apt/lists").iterdir())
        policy = tmp_path / "usr/sbin/policy-rc.d"
        assert policy.read_text().rstrip().endswith("exit 101") and policy.stat().st_mode & 0o111
        sources = (tmp_path / "etc/apt/sources.list").read_text()
        assert "bookworm-security" in sources, sources
