"""The chart as a whole: lint, render, schema-valid Kubernetes objects, refused values."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.helm.conftest import KUBE_VERSION, RELEASE, SCENARIOS, Chart, Doc, Rendered

# Kinds the Kubernetes schemas do not carry (CRDs); none is rendered by the scenarios.
_CRD_KINDS = {"ServiceMonitor"}


class TestLint:
    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_lint_is_clean(self, chart: Chart, scenario: str) -> None:
        proc = chart.lint(scenario)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "[WARNING]" not in proc.stdout, proc.stdout
        assert "[ERROR]" not in proc.stdout, proc.stdout


class TestRender:
    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_objects_are_valid_for_the_kubernetes_version(
        self, rendered: dict[str, Rendered], scenario: str
    ) -> None:
        problems = []
        for doc in rendered[scenario].docs:
            if doc["kind"] in _CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
        assert not problems, "\n".join(problems)

    def test_minimal_renders_the_expected_objects(self, rendered: dict[str, Rendered]) -> None:
        assert rendered["minimal"].kinds() == sorted(
            ["ConfigMap"] * 2
            + ["Deployment"] * 4  # broker, alerts, export, integrity watcher
            + ["NetworkPolicy"] * 6  # deny-all, broker, ledger, alerts, export, watcher
            + ["PersistentVolumeClaim"] * 2  # export, the watcher's cursor
            + ["PodDisruptionBudget"]  # 2 replicas by default
            + ["Service"] * 2  # broker, ledger (headless)
            + ["ServiceAccount"] * 2
            + ["StatefulSet"]  # ledger
        )

    def test_production_adds_hpa_and_ingress(self, rendered: dict[str, Rendered]) -> None:
        kinds = rendered["production"].kinds()
        assert "HorizontalPodAutoscaler" in kinds
        assert "Ingress" in kinds
        assert "PodDisruptionBudget" in kinds
        assert "replicas" not in rendered["production"].broker()["spec"]

    def test_every_object_is_namespaced_to_the_release(self, rendered: dict[str, Rendered]) -> None:
        for scenario in rendered.values():
            for doc in scenario.docs:
                assert doc["metadata"]["namespace"] == "telerad", doc["metadata"]

    def test_every_object_carries_the_standard_labels(self, rendered: dict[str, Rendered]) -> None:
        for doc in rendered["production"].docs:
            labels = doc["metadata"]["labels"]
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
                assert key in labels, (doc["kind"], doc["metadata"]["name"])


def _refusals() -> list[Any]:
    """(scenario, overrides, words of the expected message)."""
    secret = {"existingSecret": ""}
    return [
        pytest.param(None, {}, "config.publicUrl is required", id="defaults-alone"),
        pytest.param(
            "minimal",
            {"config": {"kafka": {"bootstrapServers": ""}}},
            "bootstrapServers is required",
            id="no-kafka",
        ),
        pytest.param(
            "minimal", {"config": {"pacs": {"url": ""}}}, "pacs.url is required", id="no-pacs"
        ),
        pytest.param(
            "minimal",
            {"config": {"kafka": {"securityProtocol": "PLAINTEXT"}}},
            "PLAINTEXT is not allowed in production",
            id="kafka-plaintext-in-production",
        ),
        pytest.param(
            "minimal",
            {"secrets": {"kafkaBroker": {"existingSecret": ""}}},
            "secrets.kafkaBroker.existingSecret is required",
            id="kafka-no-broker-user-secret",
        ),
        pytest.param(
            "minimal",
            {"secrets": {"kafkaConsumers": {"username": ""}}},
            "secrets.kafkaConsumers.username is required",
            id="kafka-no-consumer-scram-user",
        ),
        pytest.param(
            "minimal",
            {"secrets": {"kafkaIntegrity": {"existingSecret": ""}}},
            "secrets.kafkaIntegrity.existingSecret is required",
            id="kafka-no-integrity-user-secret",
        ),
        pytest.param(
            "minimal",
            {"secrets": {"kafkaIntegrity": {"username": ""}}},
            "secrets.kafkaIntegrity.username is required",
            id="kafka-no-integrity-scram-user",
        ),
        pytest.param(
            "minimal",
            {"integrity": {"watch": {"persistence": {"enabled": False}}}},
            "integrity.watch.persistence.enabled=false is not allowed in production",
            id="integrity-cursor-on-an-emptydir-in-production",
        ),
        pytest.param(
            "minimal",
            {"integrity": {"verify": {"enabled": True}}, "audit": {"ledger": {"enabled": False}}},
            "integrity.verify.enabled needs audit.ledger.enabled",
            id="integrity-sweep-without-ledger",
        ),
        pytest.param(
            "minimal",
            {"secrets": {"linkKeys": secret}},
            "secrets.linkKeys.existingSecret is required in production",
            id="no-links",
        ),
        pytest.param(
            "minimal",
            {"secrets": {"sessionKeys": secret}},
            "secrets.sessionKeys.existingSecret is required",
            id="no-sessions",
        ),
        pytest.param(
            "minimal",
            {"secrets": {"pseudonymKey": secret}},
            "secrets.pseudonymKey.existingSecret is required",
            id="no-pseudonym",
        ),
        pytest.param(
            "minimal",
            {"secrets": {"issuers": secret}},
            "production needs trusted issuers",
            id="no-issuers",
        ),
        pytest.param(
            "minimal",
            {"audit": {"ledger": {"signingKey": secret}}},
            "audit.ledger.signingKey.existingSecret is required",
            id="no-ledger-key",
        ),
        pytest.param(
            "minimal",
            {"config": {"publicUrl": "http://telerad.example.org"}},
            "must be https:// in production",
            id="plain-http",
        ),
        pytest.param(
            "minimal",
            {"config": {"identity": {"sessionCookieSecure": False}}},
            "sessionCookieSecure=false is not allowed",
            id="insecure-cookie",
        ),
        pytest.param(
            "minimal",
            {"config": {"pacs": {"username": "u"}}},
            "secrets.pacs.existingSecret must hold the password",
            id="pacs-user-no-pw",
        ),
        pytest.param(
            "bundle",
            {"secrets": {"issuers": {"existingSecret": "s"}}},
            "not both",
            id="issuers-twice",
        ),
        pytest.param(
            "minimal",
            {"opa": {"bundle": {"url": "https://bundles.example"}}},
            "choose one policy source",
            id="opa-two-sources",
        ),
        pytest.param(
            "minimal",
            {"opa": {"policy": {"fromChart": False}}},
            "no policy source",
            id="opa-no-source",
        ),
        pytest.param(
            "bundle",
            {"opa": {"bundle": {"url": "http://bundles.example"}}},
            "must be https:// in production",
            id="opa-bundle-plain-http",
        ),
        pytest.param("minimal", {"pdb": {"maxUnavailable": 1}}, "exclusive", id="pdb-both"),
        pytest.param(
            "minimal",
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}},
            "minReplicas must not exceed",
            id="hpa-min-above-max",
        ),
        pytest.param(
            "minimal",
            {"metrics": {"serviceMonitor": {"enabled": True}}},
            "needs metrics.enabled",
            id="servicemonitor-without-metrics",
        ),
        pytest.param(
            "minimal", {"metrics": {"enabled": True}}, "metricsFrom", id="metrics-blocked-by-netpol"
        ),
        pytest.param(
            "production",
            {"kafkaTopics": {"enabled": True}},
            "secrets.kafkaAdmin.existingSecret is required",
            id="topics-job-without-admin-user",
        ),
        pytest.param(
            "minimal",
            {"config": {"tracing": {"enabled": True}}},
            "needs config.tracing.otlpEndpoint",
            id="tracing-without-endpoint",
        ),
        pytest.param(
            "minimal",
            {"config": {"tracing": {"enabled": True, "otlpEndpoint": "http://c:4318/v1/traces"}}},
            "networkPolicy.egress.otlp.to",
            id="tracing-blocked-by-netpol",
        ),
        pytest.param(
            "minimal",
            {"metrics": {"port": 8000}, "broker": {"port": 8000}},
            "must differ from broker.port",
            id="metrics-on-the-http-port",
        ),
        pytest.param(
            "minimal",
            {"networkPolicy": {"egress": {"kafka": {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}}}},
            "allows everything",
            id="egress-allow-all-cidr",
        ),
        pytest.param(
            "minimal",
            {"networkPolicy": {"egress": {"pacs": {"to": [{"ipBlock": {"cidr": "::/0"}}]}}}},
            "allows everything",
            id="egress-allow-all-v6",
        ),
        pytest.param(
            "minimal",
            {"networkPolicy": {"egress": {"extra": [{"to": [{"namespaceSelector": {}}]}]}}},
            "every pod of the cluster",
            id="egress-all-namespaces",
        ),
        pytest.param(
            "minimal",
            {"networkPolicy": {"ingress": {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}}},
            "allows everything",
            id="ingress-allow-all",
        ),
        pytest.param(
            "minimal",
            {"config": {"extraEnv": {"TELERAD_PACS__PASSWORD": "x"}}},
            "secrets",
            id="secret-in-extra-env",
        ),
    ]


class TestRefusedValues:
    @pytest.mark.parametrize(("scenario", "overrides", "message"), _refusals())
    def test_refused(
        self, chart: Chart, scenario: str | None, overrides: dict[str, Any], message: str
    ) -> None:
        assert message in chart.refusal(scenario, overrides)

    def test_allow_all_is_accepted_when_network_policy_is_off(self, chart: Chart) -> None:
        rendered = chart.template(
            "minimal",
            {
                "networkPolicy": {
                    "enabled": False,
                    "egress": {"extra": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]},
                }
            },
        )
        assert rendered.all("NetworkPolicy") == []

    def test_development_needs_no_secrets(self, chart: Chart) -> None:
        rendered = chart.template(
            None,
            {
                "config": {
                    "environment": "development",
                    "publicUrl": "http://telerad.dev.example",
                    "kafka": {"bootstrapServers": "kafka:9092", "securityProtocol": "PLAINTEXT"},
                    "pacs": {"url": "http://orthanc:8042/dicom-web"},
                    "identity": {"sessionCookieSecure": False},
                },
                "audit": {"ledger": {"enabled": False}},
            },
        )
        env = rendered.container(rendered.broker(), "broker").get("env", [])
        assert "TELERAD_SECRETS_DIR" not in {e["name"] for e in env}


class TestSchema:
    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"broker": {"replicaCuont": 3}}, "'replicaCuont' not allowed"),
            ({"networkPolicy": {"egress": {"kafak": {"to": [], "ports": []}}}}, "'kafak'"),
            (
                {"securityContext": {"container": {"readOnlyRootFilesystem": False}}},
                "readOnlyRootFilesystem",
            ),
            (
                {"securityContext": {"container": {"allowPrivilegeEscalation": True}}},
                "allowPrivilegeEscalation",
            ),
            (
                {"securityContext": {"container": {"capabilities": {"drop": ["NET_RAW"]}}}},
                "capabilities",
            ),
            ({"securityContext": {"pod": {"runAsNonRoot": False}}}, "runAsNonRoot"),
            (
                {"secrets": {"linkKeys": {"existingSecret": "s", "value": "aGVsbG8"}}},
                "'value' not allowed",
            ),
            ({"networkPolicy": {"egress": {"extra": [{"ports": [{"port": 443}]}]}}}, "to"),
            ({"networkPolicy": {"egress": {"kafka": {"to": [{}]}}}}, "minProperties"),
            (
                {"config": {"issuers": [{"issuer": "https://idp.example", "client_secret": "x"}]}},
                "'client_secret' not allowed",
            ),
            ({"image": {"digest": "sha256:short"}}, "digest"),
            ({"config": {"extraEnv": {"OTHER_VAR": "x"}}}, "OTHER_VAR"),
        ],
    )
    def test_schema_refuses(self, chart: Chart, overrides: dict[str, Any], message: str) -> None:
        assert message in chart.refusal("minimal", overrides)


class TestKafkaAuth:
    """Each workload authenticates to Kafka as its own user, with secrets mounted as files."""

    @staticmethod
    def _env(rendered: Rendered, workload: Doc, name: str) -> dict[str, str]:
        return {e["name"]: e["value"] for e in rendered.container(workload, name).get("env", [])}

    def test_scram_users_per_workload(self, rendered: dict[str, Rendered]) -> None:
        production = rendered["production"]
        env = self._env(production, production.broker(), "broker")
        assert env["TELERAD_KAFKA__SASL_USERNAME"] == "telerad-broker"
        password = env["TELERAD_KAFKA__SASL_PASSWORD_FILE"]
        assert password == "/var/run/secrets/telerad-kafka-user/password"
        ledger = next(w for w in production.workloads() if w["kind"] == "StatefulSet")
        assert self._env(production, ledger, "ledger")["TELERAD_KAFKA__SASL_USERNAME"] == (
            "telerad-audit"
        )
        volumes = {v["name"]: v for v in ledger["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-user"]["secret"]["secretName"] == "telerad-audit"
        assert volumes["kafka-ca"]["secret"]["secretName"] == "hospital-kafka-cluster-ca-cert"
        config = production.get("ConfigMap", f"{RELEASE}-env")["data"]
        assert config["TELERAD_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
        assert config["TELERAD_KAFKA__SSL_CA_FILE"] == "/var/run/secrets/telerad-kafka-ca/ca.crt"

    def test_mutual_tls_mounts_the_client_certificate(self, rendered: dict[str, Rendered]) -> None:
        bundle = rendered["bundle"]
        broker = bundle.broker()
        env = self._env(bundle, broker, "broker")
        assert env["TELERAD_KAFKA__SSL_CERT_FILE"].endswith("/user.crt")
        assert env["TELERAD_KAFKA__SSL_KEY_FILE"].endswith("/user.key")
        assert "TELERAD_KAFKA__SASL_USERNAME" not in env
        volumes = {v["name"]: v for v in broker["spec"]["template"]["spec"]["volumes"]}
        items = [i["key"] for i in volumes["kafka-user"]["secret"]["items"]]
        assert items == ["user.crt", "user.key"]
        assert volumes["kafka-user"]["secret"]["defaultMode"] == 288
