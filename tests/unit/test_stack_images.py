"""Build contexts and root filesystem tidying for the locally built images (no engine needed)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

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


class TestImageSource:
    def test_public_by_default(self) -> None:
        assert images.image_source({}) == "public"

    def test_local_where_ci_has_no_registry(self) -> None:
        assert images.image_source({"TELERAD_STACK_REQUIRE_ENGINE": "1"}) == "local"

    def test_the_variable_decides(self) -> None:
        env = {"TELERAD_STACK_REQUIRE_ENGINE": "1", "TELERAD_STACK_IMAGES": "Public"}
        assert images.image_source(env) == "public"
        assert images.image_source({"TELERAD_STACK_IMAGES": "local"}) == "local"

    def test_a_typo_is_refused(self) -> None:
        with pytest.raises(ValueError, match="public or local"):
            images.image_source({"TELERAD_STACK_IMAGES": "pubic"})

    def test_public_images_are_the_cached_versions(self) -> None:
        from devstack import provision

        assert images.PUBLIC_IMAGES["kafka"] == f"apache/kafka:{provision.KAFKA_VERSION}"
        assert images.PUBLIC_IMAGES["keycloak"].startswith("quay.io/keycloak/keycloak:")
        assert images.PUBLIC_IMAGES["opa"].startswith("openpolicyagent/opa:1.")
        assert images.PUBLIC_IMAGES["orthanc"].startswith("orthancteam/orthanc:")
        assert all(images.is_public(i) for i in images.PUBLIC_IMAGES.values())
        assert not images.is_public("telerad-local/kafka:abc")


class FakeImages:
    """docker's ``client.images``: what exists, what a pull gives."""

    def __init__(self, pullable: bool) -> None:
        self.pullable = pullable
        self.present: set[str] = set()
        self.pulled: list[str] = []

    def get(self, tag: str) -> object:
        import docker.errors

        if tag not in self.present:
            raise docker.errors.ImageNotFound(tag)
        return object()

    def pull(self, image: str) -> object:
        import docker.errors

        if not self.pullable:
            raise docker.errors.APIError("registry unreachable")
        self.pulled.append(image)
        self.present.add(image)
        return object()


def _images(pullable: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[images.Images, list[str]]:
    built: list[str] = []
    subject = images.Images.__new__(images.Images)
    subject.client = type("Client", (), {"images": FakeImages(pullable)})()
    monkeypatch.setattr(images.Images, "base", lambda self: "telerad-local/base:x")
    monkeypatch.setattr(
        images.Images,
        "_build",
        lambda self, name, *a, **k: built.append(name) or f"telerad-local/{name}:x",
    )
    monkeypatch.setattr(images, "_context", lambda files: contextlib.nullcontext(Path("/none")))
    return subject, built


class TestPart:
    def test_public_image_pulled(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELERAD_STACK_IMAGES", "public")
        subject, built = _images(True, monkeypatch)
        assert subject.part("orthanc") == images.PUBLIC_IMAGES["orthanc"]
        assert built == []

    def test_built_here_when_the_pull_fails(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELERAD_STACK_IMAGES", "public")
        subject, built = _images(False, monkeypatch)
        assert subject.part("orthanc") == "telerad-local/orthanc:x"
        assert built == ["orthanc"]

    def test_local_never_pulls(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELERAD_STACK_IMAGES", "local")
        subject, built = _images(True, monkeypatch)
        assert subject.part("orthanc") == "telerad-local/orthanc:x"
        assert (built, subject.client.images.pulled) == (["orthanc"], [])

    def test_an_override_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELERAD_STACK_IMAGES", "public")
        monkeypatch.setenv("TELERAD_STACK_IMAGE_ORTHANC", "registry.hospital/orthanc:1")
        subject, _ = _images(True, monkeypatch)
        assert subject.part("orthanc") == "registry.hospital/orthanc:1"
