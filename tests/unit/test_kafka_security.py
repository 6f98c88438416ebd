"""The one place that secures kafka-python clients, and the settings it reads."""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.app import create_app
from broker.audit.kafka import security_config
from broker.config import KafkaSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
KEY = base64.urlsafe_b64encode(b"k" * 32).rstrip(b"=").decode()  # test-only


class TestSecurityConfig:
    def test_scram_over_tls_verifies_the_server(self) -> None:
        kafka = KafkaSettings(
            sasl_username="telerad-broker", sasl_password="pw", ssl_ca_file=Path("ca.pem")
        )
        assert security_config(kafka) == {
            "security_protocol": "SASL_SSL",
            "ssl_check_hostname": True,
            "ssl_cafile": "ca.pem",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "telerad-broker",
            "sasl_plain_password": "pw",
        }

    def test_password_from_a_mounted_file(self, tmp_path: Path) -> None:
        (tmp_path / "password").write_text("from-the-secret\n")
        kafka = KafkaSettings(sasl_username="u", sasl_password_file=tmp_path / "password")
        assert security_config(kafka)["sasl_plain_password"] == "from-the-secret"

    @pytest.mark.parametrize(
        "kafka",
        [
            KafkaSettings(),  # the default is SASL_SSL: no credentials, no client
            KafkaSettings(sasl_username="u"),
            KafkaSettings(sasl_password="p"),
            KafkaSettings(security_protocol="SSL"),  # TLS without SASL must be mutual TLS
        ],
    )
    def test_missing_credentials_refuse_to_build_a_client(self, kafka: KafkaSettings) -> None:
        with pytest.raises(ValueError, match="TELERAD_KAFKA__"):
            security_config(kafka)

    def test_mutual_tls(self) -> None:
        kafka = KafkaSettings(
            security_protocol="SSL",
            ssl_cert_file=Path("user.crt"),
            ssl_key_file=Path("user.key"),
            ssl_key_password="kp",
        )
        config = security_config(kafka)
        assert config["security_protocol"] == "SSL"
        assert (config["ssl_certfile"], config["ssl_keyfile"]) == ("user.crt", "user.key")
        assert config["ssl_password"] == "kp"
        assert config["ssl_check_hostname"] is True
        assert "sasl_mechanism" not in config

    def test_plaintext_is_only_the_protocol(self) -> None:
        assert security_config(KafkaSettings(security_protocol="PLAINTEXT")) == {
            "security_protocol": "PLAINTEXT"
        }


class TestKafkaSettings:
    def test_certificate_without_key_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="go together"):
            KafkaSettings(security_protocol="SSL", ssl_cert_file=Path("user.crt"))

    def test_min_insync_above_replication_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="min_insync_replicas"):
            KafkaSettings(replication_factor=1, min_insync_replicas=2)

    def test_password_is_not_printed(self) -> None:
        kafka = KafkaSettings(sasl_username="u", sasl_password="s3cret-kafka")
        assert "s3cret-kafka" not in repr(kafka)


class TestProduction:
    def test_plaintext_kafka_is_refused(self) -> None:
        settings = Settings(
            environment="production",
            pseudonym_key=KEY,
            links={"keys": {"k1": KEY}},
            identity={"session_keys": {"s1": KEY}},
            kafka={"security_protocol": "PLAINTEXT"},
        )
        with pytest.raises(ValueError, match="PLAINTEXT is not allowed in production"):
            create_app(settings)


def test_no_kafka_client_is_built_outside_the_adapter() -> None:
    """Every client goes through broker/audit/kafka*.py, where security_config is applied."""
    clients = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}
    offenders = []
    for path in [*ROOT.glob("broker/**/*.py"), *ROOT.glob("streams/**/*.py")]:
        if path.parent.name == "audit" and path.name.startswith("kafka"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in clients:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
