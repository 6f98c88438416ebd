from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.config import Settings


class TestSettings:
    def test_unknown_variable_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELERAD_OPA__URLL", "http://127.0.0.1:8181")
        with pytest.raises(ValidationError, match="urll"):
            Settings()

    def test_secrets_are_not_printed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELERAD_PACS__PASSWORD", "s3cret-value")
        settings = Settings()
        assert settings.pacs.password is not None
        assert settings.pacs.password.get_secret_value() == "s3cret-value"
        assert "s3cret-value" not in repr(settings)
        assert "s3cret-value" not in str(settings.model_dump())

    def test_issuers_from_json(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(
            "TELERAD_ISSUERS", '[{"issuer": "https://idp.example/realms/a", "client_id": "b"}]'
        )
        (issuer,) = Settings().issuers
        assert str(issuer.issuer) == "https://idp.example/realms/a"
        assert issuer.audiences == ["telerad-broker"]
        assert "none" not in issuer.algorithms

    def test_settings_are_frozen(self) -> None:
        settings = Settings()
        with pytest.raises(ValidationError):
            settings.port = 1  # type: ignore[misc]

    def test_opa_deadline_is_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELERAD_OPA__TIMEOUT_SECONDS", "60")
        with pytest.raises(ValidationError, match="timeout_seconds"):
            Settings()


class TestEnvironmentCheck:
    def test_top_level_typo_is_refused(self) -> None:
        from broker.config import check_environment

        with pytest.raises(ValueError, match="TELERAD_PUBLIC_URLL"):
            check_environment({"TELERAD_PUBLIC_URLL": "http://x", "TELERAD_PORT": "1"})

    def test_known_nested_and_tooling_variables_pass(self) -> None:
        from broker.config import check_environment

        check_environment(
            {
                "TELERAD_PORT": "8000",
                "TELERAD_OPA__URL": "http://127.0.0.1:8181",
                "TELERAD_STACK_KAFKA_BOOTSTRAP": "x",
                "TELERAD_CACHE": "/tmp/c",
                "PATH": "/bin",
            }
        )
