"""One class per template: what each renders, and what it must never render."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.helm.conftest import RELEASE, SCENARIOS, Chart, Doc, Rendered

_RESTRICTED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod(workload: Doc) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _env(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


class TestSecurityContext:
    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_every_container_is_restricted(
        self, rendered: dict[str, Rendered], scenario: str
    ) -> None:
        containers = rendered[scenario].containers()
        assert len(containers) >= 3
        for name, container in containers:
            sc = container["securityContext"]
            for key, wanted in _RESTRICTED.items():
                assert sc.get(key) == wanted, (name, key, sc)
            assert sc["runAsUser"] == 10001, name

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_every_pod_is_non_root_without_token_or_host_access(
        self, rendered: dict[str, Rendered], scenario: str
    ) -> None:
        for workload in rendered[scenario].workloads():
            pod = _pod(workload)
            name = workload["metadata"]["name"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] == 10001, name
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert pod["automountServiceAccountToken"] is False, name
            assert pod["enableServiceLinks"] is False, name
            for host in ("hostNetwork", "hostPID", "hostIPC"):
                assert not pod.get(host), (name, host)

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_every_container_has_requests_and_limits(
        self, rendered: dict[str, Rendered], scenario: str
    ) -> None:
        for name, container in rendered[scenario].containers():
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), name
            assert {"cpu", "memory"} <= resources["limits"].keys(), name

    def test_tmp_is_writable_and_mounted_config_read_only(
        self, rendered: dict[str, Rendered]
    ) -> None:
        for workload in rendered["production"].workloads():
            volumes = {v["name"]: v for v in _pod(workload)["volumes"]}
            assert volumes["tmp"]["emptyDir"]["sizeLimit"] == "64Mi"
            for container in _pod(workload)["containers"]:
                mounts = {m["name"]: m for m in container["volumeMounts"]}
                assert mounts["tmp"]["mountPath"] == "/tmp"
                for mount in mounts.values():
                    volume = volumes.get(mount["name"], {})  # else a volumeClaimTemplate
                    if "secret" in volume or "projected" in volume or "configMap" in volume:
                        assert mount.get("readOnly") is True, mount


class TestServiceAccount:
    def test_tokens_are_never_mounted(self, rendered: dict[str, Rendered]) -> None:
        accounts = rendered["minimal"].all("ServiceAccount")
        assert {a["metadata"]["name"] for a in accounts} == {RELEASE, f"{RELEASE}-audit"}
        for account in accounts:
            assert account["automountServiceAccountToken"] is False

    def test_broker_and_consumers_have_their_own_identity(
        self, rendered: dict[str, Rendered]
    ) -> None:
        names = {
            w["metadata"]["name"]: _pod(w)["serviceAccountName"]
            for w in rendered["minimal"].workloads()
        }
        assert names.pop(RELEASE) == RELEASE
        assert set(names.values()) == {f"{RELEASE}-audit"}

    def test_no_rbac_is_rendered(self, rendered: dict[str, Rendered]) -> None:
        for scenario in rendered.values():
            assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & set(
                scenario.kinds()
            )


class TestSecrets:
    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_the_chart_creates_no_secret(
        self, rendered: dict[str, Rendered], scenario: str
    ) -> None:
        assert rendered[scenario].all("Secret") == []

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_no_secret_reaches_the_environment(
        self, rendered: dict[str, Rendered], scenario: str
    ) -> None:
        for name, container in rendered[scenario].containers():
            for env in container.get("env", []):
                assert "valueFrom" not in env, (name, env)
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, (name, source)
        for configmap in rendered[scenario].all("ConfigMap"):
            for key in configmap["data"]:
                assert not key.endswith(("PASSWORD", "_KEYS", "SECRET", "PSEUDONYM_KEY")), key

    def test_secret_files_are_projected_under_their_settings_names(
        self, rendered: dict[str, Rendered]
    ) -> None:
        broker = rendered["production"].broker()
        volumes = {v["name"]: v for v in _pod(broker)["volumes"]}
        sources = volumes["secrets"]["projected"]["sources"]
        files = {s["secret"]["name"]: s["secret"]["items"] for s in sources}
        assert files == {
            "telerad-links": [{"key": "links.json", "path": "TELERAD_LINKS"}],
            "telerad-sessions": [{"key": "identity.json", "path": "TELERAD_IDENTITY"}],
            "telerad-pseudonym": [{"key": "pseudonym-key", "path": "TELERAD_PSEUDONYM_KEY"}],
            "telerad-issuers": [{"key": "issuers.json", "path": "TELERAD_ISSUERS"}],
            "telerad-pacs": [{"key": "pacs.json", "path": "TELERAD_PACS"}],
        }
        assert volumes["secrets"]["projected"]["defaultMode"] == 0o440
        container = rendered["production"].container(broker, "broker")
        assert _env(container)["TELERAD_SECRETS_DIR"] == "/var/run/secrets/telerad"
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "secrets"]
        assert mount == {
            "name": "secrets",
            "mountPath": "/var/run/secrets/telerad",
            "readOnly": True,
        }

    def test_only_the_broker_container_sees_the_secrets(
        self, rendered: dict[str, Rendered]
    ) -> None:
        production = rendered["production"]
        seeing = {}
        for workload in production.workloads():
            volumes = {v["name"]: v for v in _pod(workload)["volumes"]}
            for container in _pod(workload)["containers"]:
                if any(m["name"] == "secrets" for m in container["volumeMounts"]):
                    sources = volumes["secrets"]["projected"]["sources"]
                    files = {i["path"] for s in sources for i in s["secret"]["items"]}
                    seeing[f"{workload['metadata']['name']}/{container['name']}"] = files
        # the integrity watcher reads the PACS too: its secrets directory holds that password
        # and nothing of the broker's keys
        assert seeing.pop(f"{RELEASE}-integrity-watch/watch") == {"TELERAD_PACS"}
        assert list(seeing) == [f"{RELEASE}/broker"]

    def test_ledger_key_is_mounted_read_only_from_its_secret(
        self, rendered: dict[str, Rendered]
    ) -> None:
        ledger = rendered["production"].get("StatefulSet")
        volumes = {v["name"]: v for v in _pod(ledger)["volumes"]}
        assert volumes["signing-key"]["secret"] == {
            "secretName": "telerad-ledger-key",
            "defaultMode": 0o440,
            "items": [
                {"key": "ledger-signing-key.pem", "path": "ledger-signing-key.pem"},
                {"key": "ledger-signing-key.pub", "path": "ledger-signing-key.pub"},
            ],
        }
        container = rendered["production"].container(ledger, "ledger")
        assert {
            "name": "signing-key",
            "mountPath": "/var/run/secrets/telerad-ledger",
            "readOnly": True,
        } in container["volumeMounts"]
        assert _env(container)["TELERAD_STREAMS__LEDGER_KEY_PATH"] == (
            "/var/run/secrets/telerad-ledger/ledger-signing-key.pem"
        )
        assert "--create-key" not in container["args"]


class TestNetworkPolicy:
    def test_release_wide_deny_all_by_default(self, rendered: dict[str, Rendered]) -> None:
        deny = rendered["minimal"].get("NetworkPolicy", f"{RELEASE}-default-deny")
        assert deny["spec"] == {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "telerad-broker",
                    "app.kubernetes.io/instance": RELEASE,
                }
            },
            "policyTypes": ["Ingress", "Egress"],
        }

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_every_workload_is_selected_by_both_directions(
        self, rendered: dict[str, Rendered], scenario: str
    ) -> None:
        policies = rendered[scenario].all("NetworkPolicy")
        for workload in rendered[scenario].workloads():
            labels = workload["spec"]["template"]["metadata"]["labels"]
            own = [
                p
                for p in policies
                if p["metadata"]["name"] != f"{RELEASE}-default-deny"
                and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
            ]
            assert len(own) == 1, workload["metadata"]["name"]
            assert own[0]["spec"]["policyTypes"] == ["Ingress", "Egress"]

    def test_minimal_allows_only_dns_out_and_the_ingress_controller_in(
        self, rendered: dict[str, Rendered]
    ) -> None:
        broker = rendered["minimal"].get("NetworkPolicy", RELEASE)["spec"]
        (dns,) = broker["egress"]
        assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
        (ingress,) = broker["ingress"]
        assert ingress["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
        ]
        assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]

    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_no_rule_without_peers(self, rendered: dict[str, Rendered], scenario: str) -> None:
        for policy in rendered[scenario].all("NetworkPolicy"):
            for rule in policy["spec"].get("egress", []):
                assert rule.get("to"), policy["metadata"]["name"]
                for peer in rule["to"]:
                    assert peer.get("ipBlock", {}).get("cidr") not in ("0.0.0.0/0", "::/0")
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), policy["metadata"]["name"]

    def test_production_egress_is_exactly_the_listed_peers(
        self, rendered: dict[str, Rendered]
    ) -> None:
        spec = rendered["production"].get("NetworkPolicy", RELEASE)["spec"]
        ports = [[p["port"] for p in rule["ports"]] for rule in spec["egress"]]
        assert ports == [[53, 53], [443], [9093], [443]]  # dns, idps, kafka, pacs

    def test_consumers_reach_dns_and_kafka_only(self, rendered: dict[str, Rendered]) -> None:
        for name in ("ledger", "alerts"):
            spec = rendered["production"].get("NetworkPolicy", f"{RELEASE}-audit-{name}")["spec"]
            assert spec["ingress"] == []
            assert [[p["port"] for p in r["ports"]] for r in spec["egress"]] == [[53, 53], [9093]]
        export = rendered["production"].get("NetworkPolicy", f"{RELEASE}-audit-export")["spec"]
        assert [[p["port"] for p in r["ports"]] for r in export["egress"]] == [
            [53, 53],
            [9093],
            [6514],
        ]

    def test_syslog_egress_only_when_exporting_to_syslog(
        self, rendered: dict[str, Rendered]
    ) -> None:
        export = rendered["minimal"].get("NetworkPolicy", f"{RELEASE}-audit-export")["spec"]
        assert len(export["egress"]) == 1  # DNS; Kafka is not listed in minimal

    def test_bundle_server_egress_only_in_bundle_mode(self, rendered: dict[str, Rendered]) -> None:
        def cidrs(scenario: str) -> list[str]:
            spec = rendered[scenario].get("NetworkPolicy", RELEASE)["spec"]
            return [p["ipBlock"]["cidr"] for r in spec["egress"] for p in r["to"] if "ipBlock" in p]

        assert "203.0.113.40/32" in cidrs("bundle")
        assert "203.0.113.40/32" not in cidrs("minimal")

    def test_bundle_peers_are_ignored_without_a_bundle(self, chart: Chart) -> None:
        peers = {"to": [{"ipBlock": {"cidr": "203.0.113.40/32"}}], "ports": [{"port": 443}]}
        rendered = chart.template("minimal", {"networkPolicy": {"egress": {"opaBundle": peers}}})
        spec = rendered.get("NetworkPolicy", RELEASE)["spec"]
        assert "203.0.113.40/32" not in json.dumps(spec)

    def test_disabled(self, chart: Chart) -> None:
        assert (
            chart.template("minimal", {"networkPolicy": {"enabled": False}}).all("NetworkPolicy")
            == []
        )


class TestPodDisruptionBudget:
    @pytest.mark.parametrize(
        ("overrides", "rendered_pdb"),
        [
            ({"broker": {"replicaCount": 1}}, False),
            ({"broker": {"replicaCount": 2}}, True),
            ({"broker": {"replicaCount": 1}, "pdb": {"enabled": False}}, False),
            ({"broker": {"replicaCount": 3}, "pdb": {"enabled": False}}, False),
            (
                {"broker": {"replicaCount": 3}, "autoscaling": {"enabled": True, "minReplicas": 1}},
                False,
            ),
            (
                {"broker": {"replicaCount": 1}, "autoscaling": {"enabled": True, "minReplicas": 2}},
                True,
            ),
        ],
    )
    def test_only_with_more_than_one_replica(
        self, chart: Chart, overrides: dict[str, Any], rendered_pdb: bool
    ) -> None:
        assert bool(chart.template("minimal", overrides).all("PodDisruptionBudget")) is rendered_pdb

    def test_selects_the_broker(self, rendered: dict[str, Rendered]) -> None:
        pdb = rendered["production"].get("PodDisruptionBudget")
        assert pdb["spec"]["minAvailable"] == 2
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"

    def test_max_unavailable(self, chart: Chart) -> None:
        rendered = chart.template("minimal", {"pdb": {"minAvailable": "", "maxUnavailable": 1}})
        assert rendered.get("PodDisruptionBudget")["spec"] == {
            "maxUnavailable": 1,
            "selector": rendered.get("PodDisruptionBudget")["spec"]["selector"],
        }


class TestHorizontalPodAutoscaler:
    def test_autoscaling_v2_on_cpu_and_memory(self, rendered: dict[str, Rendered]) -> None:
        hpa = rendered["production"].get("HorizontalPodAutoscaler")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": RELEASE,
        }
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
        metrics = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
        assert metrics == {
            "cpu": {"type": "Utilization", "averageUtilization": 70},
            "memory": {"type": "Utilization", "averageUtilization": 80},
        }

    def test_off_by_default(self, rendered: dict[str, Rendered]) -> None:
        assert rendered["minimal"].all("HorizontalPodAutoscaler") == []
        assert rendered["minimal"].broker()["spec"]["replicas"] == 2


class TestIngressAndService:
    def test_ingress_routes_to_the_service(self, rendered: dict[str, Rendered]) -> None:
        ingress = rendered["production"].get("Ingress")["spec"]
        assert ingress["ingressClassName"] == "nginx"
        assert ingress["tls"] == [
            {"secretName": "telerad-tls", "hosts": ["telerad.hospital.example"]}
        ]
        (rule,) = ingress["rules"]
        (path,) = rule["http"]["paths"]
        assert path["backend"] == {"service": {"name": RELEASE, "port": {"name": "http"}}}
        assert rendered["minimal"].all("Ingress") == []

    def test_service_targets_the_broker_port(self, rendered: dict[str, Rendered]) -> None:
        service = rendered["minimal"].get("Service", RELEASE)["spec"]
        assert service["type"] == "ClusterIP"
        assert service["ports"] == [
            {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
        ]
        assert service["selector"]["app.kubernetes.io/component"] == "broker"


class TestChecksums:
    @pytest.mark.parametrize("scenario", SCENARIOS)
    def test_every_pod_carries_its_checksums(
        self, rendered: dict[str, Rendered], scenario: str
    ) -> None:
        for workload in rendered[scenario].workloads():
            annotations = workload["spec"]["template"]["metadata"]["annotations"]
            wanted = {"checksum/env"}
            if workload["metadata"]["name"] == RELEASE:
                wanted |= {"checksum/opa", "checksum/secret-refs"}
            if workload["kind"] == "StatefulSet":
                wanted |= {"checksum/secret-refs"}
            assert wanted <= annotations.keys(), workload["metadata"]["name"]
            for key in wanted:
                assert len(annotations[key]) == 64, (key, annotations[key])

    @pytest.mark.parametrize(
        ("overrides", "changed"),
        [
            ({"config": {"logLevel": "DEBUG"}}, "checksum/env"),
            ({"opa": {"decisionLogsConsole": False}}, "checksum/opa"),
            (
                {"secrets": {"linkKeys": {"existingSecret": "telerad-links-2025-07"}}},
                "checksum/secret-refs",
            ),
        ],
    )
    def test_a_change_rolls_the_broker(
        self, chart: Chart, rendered: dict[str, Rendered], overrides: dict[str, Any], changed: str
    ) -> None:
        def annotations(r: Rendered) -> dict[str, str]:
            result: dict[str, str] = r.broker()["spec"]["template"]["metadata"]["annotations"]
            return result

        before = annotations(rendered["minimal"])
        after = annotations(chart.template("minimal", overrides))
        assert {k for k in before if before[k] != after[k]} == {changed}


class TestBrokerDeployment:
    def test_runs_telerad_serve_on_all_interfaces(self, rendered: dict[str, Rendered]) -> None:
        broker = rendered["minimal"].container(rendered["minimal"].broker(), "broker")
        assert "command" not in broker  # the image's ENTRYPOINT is `telerad`
        # In a pod the broker listens on the pod IP; only the NetworkPolicy reaches it.
        assert broker["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]  # noqa: S104
        assert broker["ports"] == [
            {"name": "http", "containerPort": 8000, "protocol": "TCP"},
            # /metrics listens on its own port (only the Service exposes it, when metrics.enabled)
            {"name": "metrics", "containerPort": 9464, "protocol": "TCP"},
        ]

    def test_probes(self, rendered: dict[str, Rendered]) -> None:
        broker = rendered["minimal"].container(rendered["minimal"].broker(), "broker")
        assert broker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert broker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert broker["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        # The broker's readiness gives each dependency 2 s, all at once.
        assert broker["readinessProbe"]["timeoutSeconds"] > 2

    def test_settings_come_from_the_env_configmap(self, rendered: dict[str, Rendered]) -> None:
        for name, container in rendered["minimal"].containers():
            if name.endswith("/opa"):
                assert "envFrom" not in container
                continue
            assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-env"}}], name

    def test_trusted_proxies_only_when_set(self, rendered: dict[str, Rendered]) -> None:
        production = rendered["production"].get("ConfigMap", f"{RELEASE}-env")["data"]
        assert json.loads(production["TELERAD_TRUSTED_PROXIES"]) == ["10.42.0.0/16"]
        minimal = rendered["minimal"].get("ConfigMap", f"{RELEASE}-env")["data"]
        assert "TELERAD_TRUSTED_PROXIES" not in minimal  # the broker's default: loopback only

    def test_facts_from_a_secret(self, rendered: dict[str, Rendered]) -> None:
        broker = rendered["production"].broker()
        container = rendered["production"].container(broker, "broker")
        assert _env(container)["TELERAD_FACTS_FILE"] == "/etc/telerad/facts/facts.json"
        volumes = {v["name"]: v for v in _pod(broker)["volumes"]}
        assert volumes["facts"]["secret"]["secretName"] == "telerad-facts"

    def test_topology_spread_gets_the_broker_selector(self, rendered: dict[str, Rendered]) -> None:
        (constraint,) = _pod(rendered["production"].broker())["topologySpreadConstraints"]
        assert constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"

    def test_images_are_pinned(self, rendered: dict[str, Rendered]) -> None:
        images = {name: c["image"] for name, c in rendered["production"].containers()}
        assert images[f"{RELEASE}/broker"] == ("ghcr.io/telerad/telerad-broker@sha256:" + "1" * 64)
        assert images[f"{RELEASE}/opa"] == "openpolicyagent/opa@sha256:" + "2" * 64
        minimal = {name: c["image"] for name, c in rendered["minimal"].containers()}
        assert minimal[f"{RELEASE}/broker"] == "ghcr.io/telerad/telerad-broker:0.1.0"
        assert minimal[f"{RELEASE}/opa"] == "openpolicyagent/opa:1.22.3-static"


class TestOpaSidecar:
    def _opa(self, rendered: Rendered) -> Doc:
        return rendered.container(rendered.broker(), "opa")

    def test_decision_api_on_loopback_only(self, rendered: dict[str, Rendered]) -> None:
        for scenario in rendered.values():
            opa = self._opa(scenario)
            assert "--addr=127.0.0.1:8181" in opa["args"]
            assert [p["containerPort"] for p in opa["ports"]] == [8282]  # diagnostic only
            assert "--skip-version-check" in opa["args"]

    def test_probes_use_the_diagnostic_port(self, rendered: dict[str, Rendered]) -> None:
        minimal, bundle = self._opa(rendered["minimal"]), self._opa(rendered["bundle"])
        assert minimal["livenessProbe"]["httpGet"] == {"path": "/health", "port": "opa-diag"}
        assert minimal["readinessProbe"]["httpGet"]["path"] == "/health"
        assert bundle["readinessProbe"]["httpGet"]["path"] == "/health?bundles"

    def test_policy_from_the_chart(self, rendered: dict[str, Rendered]) -> None:
        opa = self._opa(rendered["minimal"])
        assert opa["args"][-4:] == [
            "--authorization=basic",
            "--ignore=.*",
            "/opa/policy",
            "/opa/data",
        ]
        config = yaml.safe_load(
            rendered["minimal"].get("ConfigMap", f"{RELEASE}-opa")["data"]["config.yaml"]
        )
        assert config == {"decision_logs": {"console": True}}

    def test_no_policy_uses_http_send(self, rendered: dict[str, Rendered]) -> None:
        data = rendered["minimal"].get("ConfigMap", f"{RELEASE}-opa")["data"]
        rego = {k: v for k, v in data.items() if k.endswith(".rego")}
        assert rego
        for key, text in rego.items():
            assert "http.send" not in text and "net.lookup_ip_addr" not in text, key

    def test_bundle_mode(self, rendered: dict[str, Rendered]) -> None:
        bundle = rendered["bundle"]
        opa = self._opa(bundle)
        assert not any(a.startswith("/opa/") for a in opa["args"])
        # The bundle's roots own every path; its own system.authz, if any, applies.
        assert "--authorization=basic" not in opa["args"]
        data = bundle.get("ConfigMap", f"{RELEASE}-opa")["data"]
        assert set(data) == {"config.yaml"}  # no Rego, no data from the chart
        config = yaml.safe_load(data["config.yaml"])
        assert config["services"] == {
            "bundle": {
                "url": "https://bundles.hospital.example",
                "credentials": {"bearer": {"token_path": "/opa/bundle-token/token"}},
            }
        }
        assert config["bundles"]["telerad"] == {
            "service": "bundle",
            "resource": "bundles/telerad.tar.gz",
            "persist": False,
            "polling": {"min_delay_seconds": 30, "max_delay_seconds": 90},
            "signing": {"keyid": "telerad-bundle"},
        }
        assert config["keys"]["telerad-bundle"]["algorithm"] == "ES256"
        assert config["keys"]["telerad-bundle"]["key"].startswith("-----BEGIN PUBLIC KEY-----\n")
        volumes = {v["name"]: v for v in _pod(bundle.broker())["volumes"]}
        assert volumes["opa-bundle-token"]["secret"]["secretName"] == "telerad-bundle-token"
        assert "opa-policy" not in volumes

    def test_own_policy_data(self, rendered: dict[str, Rendered]) -> None:
        production = rendered["production"]
        volumes = {v["name"]: v for v in _pod(production.broker())["volumes"]}
        assert volumes["opa-data"]["configMap"] == {
            "name": "telerad-policy-data",
            "items": [{"key": "data.json", "path": "data.json"}],
        }
        assert "data.json" not in production.get("ConfigMap", f"{RELEASE}-opa")["data"]


class TestAuditConsumers:
    def test_commands(self, rendered: dict[str, Rendered]) -> None:
        production = rendered["production"]
        args = {
            w["metadata"]["name"]: _pod(w)["containers"][0]["args"]
            for w in production.workloads()
            if w["metadata"]["name"] != RELEASE
        }
        assert args == {
            f"{RELEASE}-audit-ledger": ["audit", "ledger", "--group", "telerad-ledger"],
            f"{RELEASE}-audit-alerts": ["audit", "alerts", "--group", "telerad-alerts"],
            f"{RELEASE}-integrity-watch": ["integrity", "watch"],
            f"{RELEASE}-audit-export": [
                "audit",
                "export",
                "--group",
                "telerad-export",
                "--format",
                "fhir",
                "--syslog",
                "siem.hospital.example:6514",
                "--protocol",
                "tls",
            ],
        }

    def test_probes_use_the_health_port(self, chart: Chart) -> None:
        rendered = chart.template("production", {"audit": {"health": {"port": 8090}}})
        consumers = [w for w in rendered.workloads() if w["metadata"]["name"] != RELEASE]
        assert len(consumers) == 4  # ledger, alerts, export, the integrity watcher
        for workload in consumers:
            container = _pod(workload)["containers"][0]
            name = workload["metadata"]["name"]
            assert container["ports"] == [
                {"name": "health", "containerPort": 8090, "protocol": "TCP"}
            ], name
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
            assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
            env = _env(container)
            assert env["TELERAD_STREAMS__HEALTH_PORT"] == "8090", name
            assert env["TELERAD_STREAMS__HEALTH_HOST"] == "0.0.0.0", name  # noqa: S104

    def test_the_backup_job_has_no_probes(self, chart: Chart) -> None:
        rendered = chart.template(
            "production",
            {"audit": {"ledger": {"backup": {"enabled": True, "existingClaim": "backups"}}}},
        )
        jobs = [d for d in rendered.docs if d["kind"] == "CronJob"]
        assert len(jobs) == 2  # the backups and the production scenario's integrity sweep
        for job in jobs:
            container = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
            assert "livenessProbe" not in container
            assert "TELERAD_STREAMS__HEALTH_PORT" not in _env(container)

    def test_each_runs_once(self, rendered: dict[str, Rendered]) -> None:
        for workload in rendered["production"].workloads():
            if workload["metadata"]["name"] != RELEASE:
                assert workload["spec"]["replicas"] == 1

    def test_ledger_keeps_its_database_on_its_volume(self, rendered: dict[str, Rendered]) -> None:
        ledger = rendered["production"].get("StatefulSet")
        (claim,) = ledger["spec"]["volumeClaimTemplates"]
        assert claim["spec"]["storageClassName"] == "encrypted-ssd"
        assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
        container = _pod(ledger)["containers"][0]
        assert _env(container)["TELERAD_STREAMS__LEDGER_PATH"].startswith(
            "/var/lib/telerad/ledger/"
        )
        assert {"name": "ledger", "mountPath": "/var/lib/telerad/ledger"} in container[
            "volumeMounts"
        ]

    def test_each_can_be_disabled(self, rendered: dict[str, Rendered]) -> None:
        names = {w["metadata"]["name"] for w in rendered["bundle"].workloads()}
        assert names == {RELEASE, f"{RELEASE}-audit-ledger"}
        policies = {p["metadata"]["name"] for p in rendered["bundle"].all("NetworkPolicy")}
        assert f"{RELEASE}-audit-alerts" not in policies

    def test_export_volume(self, chart: Chart, rendered: dict[str, Rendered]) -> None:
        claim = rendered["minimal"].get("PersistentVolumeClaim", f"{RELEASE}-audit-export")
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        off = chart.template("minimal", {"audit": {"export": {"persistence": {"enabled": False}}}})
        assert [c["metadata"]["name"] for c in off.all("PersistentVolumeClaim")] == [
            f"{RELEASE}-integrity-watch"
        ]
        export = off.get("Deployment", f"{RELEASE}-audit-export")
        assert {"name": "export", "emptyDir": {}} in _pod(export)["volumes"]


class TestKafkaTopicsJob:
    def test_off_by_default(self, rendered: dict[str, Rendered]) -> None:
        assert "Job" not in rendered["production"].kinds()

    def test_hook_job_as_the_admin_user_with_the_broker_settings(
        self, rendered: dict[str, Rendered]
    ) -> None:
        mtls = rendered["strimzi-mtls"]
        job = mtls.get("Job", f"{RELEASE}-kafka-topics")
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
        pod = _pod(job)
        assert pod["restartPolicy"] == "Never"
        assert pod["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod  # the release's does not exist at pre-install
        container = pod["containers"][0]
        assert container["args"] == ["kafka", "topics"]
        assert "envFrom" not in container  # nor does the ConfigMap: the settings are inline
        env = _env(container)
        configmap = mtls.get("ConfigMap", f"{RELEASE}-env")["data"]
        assert {k: env[k] for k in configmap} == configmap
        assert env["TELERAD_KAFKA__SECURITY_PROTOCOL"] == "SSL"
        assert env["TELERAD_KAFKA__SSL_CERT_FILE"].endswith("/user.crt")
        user = [v for v in pod["volumes"] if v["name"] == "kafka-user"]
        assert user and user[0]["secret"]["secretName"] == "telerad-topics"
        policy = mtls.get("NetworkPolicy", f"{RELEASE}-kafka-topics")
        assert policy["spec"]["ingress"] == []
        assert "helm.sh/hook" not in policy["metadata"].get("annotations", {})

    def test_dry_run(self, chart: Chart) -> None:
        rendered = chart.template("strimzi-mtls", {"kafkaTopics": {"dryRun": True}})
        job = rendered.get("Job", f"{RELEASE}-kafka-topics")
        assert _pod(job)["containers"][0]["args"] == ["kafka", "topics", "--dry-run"]


class TestTracing:
    def test_off_by_default(self, rendered: dict[str, Rendered]) -> None:
        env = rendered["production"].get("ConfigMap", f"{RELEASE}-env")["data"]
        assert not [k for k in env if k.startswith("TELERAD_TRACING__")]

    def test_on_with_its_collector_let_out(self, chart: Chart) -> None:
        collector = [{"namespaceSelector": {"matchLabels": {"name": "observability"}}}]
        endpoint = "http://otel-collector.observability:4318/v1/traces"
        rendered = chart.template(
            "minimal",
            {
                "config": {
                    "tracing": {"enabled": True, "otlpEndpoint": endpoint, "sampleRatio": 0.25}
                },
                "networkPolicy": {"egress": {"otlp": {"to": collector}}},
            },
        )
        env = rendered.get("ConfigMap", f"{RELEASE}-env")["data"]
        assert (
            env["TELERAD_TRACING__ENABLED"],
            env["TELERAD_TRACING__OTLP_ENDPOINT"],
            env["TELERAD_TRACING__SAMPLE_RATIO"],
        ) == ("true", endpoint, "0.25")
        egress = rendered.get("NetworkPolicy", RELEASE)["spec"]["egress"]
        assert {"to": collector, "ports": [{"port": 4318, "protocol": "TCP"}]} in egress


class TestMetrics:
    def test_off_by_default(self, rendered: dict[str, Rendered]) -> None:
        annotations = rendered["minimal"].broker()["spec"]["template"]["metadata"]["annotations"]
        assert not any(k.startswith("prometheus.io/") for k in annotations)
        assert "ServiceMonitor" not in rendered["production"].kinds()

    def test_service_monitor_and_annotations_point_at_the_metrics_port(self, chart: Chart) -> None:
        scraper = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}]
        rendered = chart.template(
            "minimal",
            {
                "metrics": {
                    "enabled": True,
                    "port": 9500,
                    "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                },
                "networkPolicy": {"ingress": {"metricsFrom": scraper}},
            },
        )
        monitor = rendered.get("ServiceMonitor")
        assert monitor["metadata"]["labels"]["release"] == "kps"
        assert monitor["spec"]["endpoints"] == [
            {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
        ]
        annotations = rendered.broker()["spec"]["template"]["metadata"]["annotations"]
        assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (
            "9500",
            "/metrics",
        )
        container = rendered.broker()["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": 9500, "protocol": "TCP"} in container["ports"]
        ports = {p["name"]: p for p in rendered.get("Service", RELEASE)["spec"]["ports"]}
        assert ports["metrics"]["targetPort"] == "metrics"
        env = rendered.get("ConfigMap", f"{RELEASE}-env")["data"]
        assert env["TELERAD_METRICS_PORT"] == "9500"
        ingress = rendered.get("NetworkPolicy", RELEASE)["spec"]["ingress"]
        assert [r["from"] for r in ingress][1] == scraper
        assert ingress[1]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        assert ingress[0]["ports"] == [{"port": "http", "protocol": "TCP"}]

    def test_metrics_port_is_not_on_the_service_when_off(
        self, rendered: dict[str, Rendered]
    ) -> None:
        ports = [p["name"] for p in rendered["minimal"].get("Service", RELEASE)["spec"]["ports"]]
        assert ports == ["http"]


class TestTransportSecurityFiles:
    """The PACS's and the syslog collector's TLS files: mounted from existing Secrets, for the
    one workload that speaks to each, and named in its settings."""

    @pytest.fixture
    def pacs_mtls(self, chart: Chart) -> Rendered:
        return chart.template("pacs-mtls")  # cached by the chart fixture

    def test_pacs_mutual_tls_mounts_ca_and_client_certificate(self, pacs_mtls: Rendered) -> None:
        broker = pacs_mtls.broker()
        volumes = {v["name"]: v for v in _pod(broker)["volumes"]}
        assert volumes["pacs-tls"]["secret"] == {
            "secretName": "telerad-broker-pacs-client",
            "defaultMode": 0o440,
            "items": [
                {"key": "ca.crt", "path": "ca.crt"},
                {"key": "tls.crt", "path": "tls.crt"},
                {"key": "tls.key", "path": "tls.key"},
            ],
        }
        container = pacs_mtls.container(broker, "broker")
        assert {
            "name": "pacs-tls",
            "mountPath": "/var/run/secrets/telerad-pacs-tls",
            "readOnly": True,
        } in container["volumeMounts"]
        env = _env(container)
        assert {k: v for k, v in env.items() if k.startswith("TELERAD_PACS__TLS__")} == {
            "TELERAD_PACS__TLS__CA_FILE": "/var/run/secrets/telerad-pacs-tls/ca.crt",
            "TELERAD_PACS__TLS__CERT_FILE": "/var/run/secrets/telerad-pacs-tls/tls.crt",
            "TELERAD_PACS__TLS__KEY_FILE": "/var/run/secrets/telerad-pacs-tls/tls.key",
        }

    def test_only_the_pacs_readers_see_the_pacs_client_key(self, pacs_mtls: Rendered) -> None:
        seeing = [
            name
            for name, c in pacs_mtls.containers()
            if any(m["name"] == "pacs-tls" for m in c.get("volumeMounts", []))
        ]
        # the integrity watcher reads the PACS as the broker does
        assert sorted(seeing) == [f"{RELEASE}-integrity-watch/watch", f"{RELEASE}/broker"]

    def test_no_pacs_tls_without_its_secret(self, rendered: dict[str, Rendered]) -> None:
        for scenario in SCENARIOS:
            broker = rendered[scenario].broker()
            assert "pacs-tls" not in {v["name"] for v in _pod(broker)["volumes"]}
            env = _env(rendered[scenario].container(broker, "broker"))
            assert not [k for k in env if k.startswith("TELERAD_PACS__TLS__")]

    def test_syslog_over_tls_with_the_collector_ca(self, rendered: dict[str, Rendered]) -> None:
        export = rendered["production"].get("Deployment", f"{RELEASE}-audit-export")
        container = rendered["production"].container(export, "export")
        assert container["args"][-2:] == ["--protocol", "tls"]
        assert _env(container)["TELERAD_STREAMS__SYSLOG_TLS__CA_FILE"] == (
            "/var/run/secrets/telerad-syslog-tls/ca.crt"
        )
        volumes = {v["name"]: v for v in _pod(export)["volumes"]}
        assert volumes["syslog-tls"]["secret"]["secretName"] == "hospital-siem-ca"
        assert volumes["syslog-tls"]["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            (
                {"config": {"pacs": {"url": "http://pacs:8042/dicom-web"}}},
                "config.pacs.url must be https:// in production",
            ),
            (
                {
                    "config": {
                        "environment": "development",
                        "publicUrl": "http://telerad.dev.example",
                        "identity": {"sessionCookieSecure": False},
                        "pacs": {"url": "http://pacs:8042/dicom-web"},
                    },
                    "secrets": {"pacsTls": {"existingSecret": "pacs-ca"}},
                },
                "secrets.pacsTls is set but config.pacs.url is not https://",
            ),
            (
                {"secrets": {"pacsTls": {"existingSecret": "pacs-ca", "caKey": ""}}},
                "secrets.pacsTls.existingSecret is set: give caKey, certKey or both",
            ),
            (
                {"secrets": {"pacsTls": {"certKey": "tls.crt"}}},
                "secrets.pacsTls.certKey is set: secrets.pacsTls.existingSecret must hold",
            ),
            (
                {"secrets": {"syslogTls": {"existingSecret": "siem-ca"}}},
                "secrets.syslogTls is set but audit.export.syslog.protocol is not tls",
            ),
        ],
    )
    def test_contradictions_are_refused(
        self, chart: Chart, overrides: dict[str, Any], message: str
    ) -> None:
        assert message in chart.refusal("minimal", overrides)


def _cronjob_pod(cronjob: Doc) -> dict[str, Any]:
    spec: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def _component(doc: Doc) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


class TestIntegrityWatcher:
    """`telerad integrity watch`: the one writer of the fingerprints the broker checks reads by."""

    NAME = f"{RELEASE}-integrity-watch"

    def test_one_replica_recreated_running_the_watcher(self, rendered: dict[str, Rendered]) -> None:
        for scenario in ("minimal", "production", "strimzi-mtls"):
            watcher = rendered[scenario].get("Deployment", self.NAME)
            assert watcher["spec"]["replicas"] == 1, scenario
            assert watcher["spec"]["strategy"] == {"type": "Recreate"}, scenario
            (container,) = _pod(watcher)["containers"]
            assert container["args"] == ["integrity", "watch"], scenario
            assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-env"}}]
            assert _pod(watcher)["serviceAccountName"] == f"{RELEASE}-audit"

    def test_cursor_inside_its_volume(self, rendered: dict[str, Rendered]) -> None:
        watcher = rendered["production"].get("Deployment", self.NAME)
        container = _pod(watcher)["containers"][0]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "cursor"]
        cursor = _env(container)["TELERAD_STREAMS__INTEGRITY_CURSOR_PATH"]
        assert cursor.startswith(mount["mountPath"] + "/"), (cursor, mount)
        assert mount.get("readOnly") is not True
        volumes = {v["name"]: v for v in _pod(watcher)["volumes"]}
        assert volumes["cursor"] == {
            "name": "cursor",
            "persistentVolumeClaim": {"claimName": self.NAME},
        }
        claim = rendered["production"].get("PersistentVolumeClaim", self.NAME)
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert claim["spec"]["storageClassName"] == "encrypted-ssd"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "64Mi"

    def test_existing_claim(self, chart: Chart) -> None:
        rendered = chart.template(
            "minimal", {"integrity": {"watch": {"persistence": {"existingClaim": "cursor-pvc"}}}}
        )
        names = [c["metadata"]["name"] for c in rendered.all("PersistentVolumeClaim")]
        assert self.NAME not in names
        volumes = {v["name"]: v for v in _pod(rendered.get("Deployment", self.NAME))["volumes"]}
        assert volumes["cursor"]["persistentVolumeClaim"] == {"claimName": "cursor-pvc"}

    def test_emptydir_outside_production_only(self, chart: Chart) -> None:
        rendered = chart.template(
            "minimal",
            {
                "config": {"environment": "development"},
                "integrity": {"watch": {"persistence": {"enabled": False}}},
            },
        )
        assert self.NAME not in [
            c["metadata"]["name"] for c in rendered.all("PersistentVolumeClaim")
        ]
        volumes = {v["name"]: v for v in _pod(rendered.get("Deployment", self.NAME))["volumes"]}
        assert volumes["cursor"] == {"name": "cursor", "emptyDir": {}}

    def test_probes_on_the_health_port(self, chart: Chart) -> None:
        rendered = chart.template(
            "minimal",
            {
                "audit": {"health": {"port": 8090}},
                "integrity": {"watch": {"healthStaleSeconds": 900}},
            },
        )
        container = _pod(rendered.get("Deployment", self.NAME))["containers"][0]
        assert container["ports"] == [{"name": "health", "containerPort": 8090, "protocol": "TCP"}]
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        env = _env(container)
        assert env["TELERAD_STREAMS__HEALTH_PORT"] == "8090"
        assert env["TELERAD_STREAMS__HEALTH_HOST"] == "0.0.0.0"  # noqa: S104
        assert env["TELERAD_STREAMS__HEALTH_STALE_SECONDS"] == "900"

    def test_its_own_kafka_user(self, rendered: dict[str, Rendered]) -> None:
        production = rendered["production"]
        watcher = production.get("Deployment", self.NAME)
        env = _env(_pod(watcher)["containers"][0])
        assert env["TELERAD_KAFKA__SASL_USERNAME"] == "telerad-integrity"
        assert env["TELERAD_KAFKA__SASL_PASSWORD_FILE"] == (
            "/var/run/secrets/telerad-kafka-user/password"
        )
        volumes = {v["name"]: v for v in _pod(watcher)["volumes"]}
        assert volumes["kafka-user"]["secret"]["secretName"] == "telerad-integrity"
        assert volumes["kafka-ca"]["secret"]["secretName"] == "hospital-kafka-cluster-ca-cert"
        mtls = rendered["strimzi-mtls"].get("Deployment", self.NAME)
        env = _env(_pod(mtls)["containers"][0])
        assert env["TELERAD_KAFKA__SSL_CERT_FILE"].endswith("/user.crt")
        assert "TELERAD_KAFKA__SASL_USERNAME" not in env
        volumes = {v["name"]: v for v in _pod(mtls)["volumes"]}
        assert volumes["kafka-user"]["secret"]["secretName"] == "telerad-integrity"
        assert [i["key"] for i in volumes["kafka-user"]["secret"]["items"]] == [
            "user.crt",
            "user.key",
        ]

    def test_pacs_password_and_tls_as_the_broker_gets_them(
        self, chart: Chart, rendered: dict[str, Rendered]
    ) -> None:
        production = rendered["production"]
        watcher = production.get("Deployment", self.NAME)
        container = _pod(watcher)["containers"][0]
        assert _env(container)["TELERAD_SECRETS_DIR"] == "/var/run/secrets/telerad"
        volumes = {v["name"]: v for v in _pod(watcher)["volumes"]}
        assert volumes["secrets"]["projected"] == {
            "defaultMode": 0o440,
            "sources": [
                {
                    "secret": {
                        "name": "telerad-pacs",
                        "items": [{"key": "pacs.json", "path": "TELERAD_PACS"}],
                    }
                }
            ],
        }
        # no PACS password referenced: no secrets directory at all
        minimal = _pod(rendered["minimal"].get("Deployment", self.NAME))
        assert "secrets" not in {v["name"] for v in minimal["volumes"]}
        assert "TELERAD_SECRETS_DIR" not in _env(minimal["containers"][0])
        # the PACS's CA and client certificate: the broker's Secret, the broker's file names
        pacs_mtls = chart.template("pacs-mtls")
        broker_tls = {
            k: v
            for k, v in _env(pacs_mtls.container(pacs_mtls.broker(), "broker")).items()
            if k.startswith("TELERAD_PACS__TLS__")
        }
        watcher = pacs_mtls.get("Deployment", self.NAME)
        env = _env(_pod(watcher)["containers"][0])
        assert {k: v for k, v in env.items() if k.startswith("TELERAD_PACS__TLS__")} == broker_tls
        assert len(broker_tls) == 3
        volumes = {v["name"]: v for v in _pod(watcher)["volumes"]}
        assert volumes["pacs-tls"]["secret"]["secretName"] == "telerad-broker-pacs-client"

    def test_egress_to_dns_kafka_and_the_pacs_only(self, rendered: dict[str, Rendered]) -> None:
        spec = rendered["production"].get("NetworkPolicy", self.NAME)["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
            "integrity-watch"
        )
        assert spec["ingress"] == []
        assert [[p["port"] for p in r["ports"]] for r in spec["egress"]] == [
            [53, 53],
            [9093],
            [443],
        ]
        assert spec["egress"][2]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/24"}}]

    def test_a_change_of_its_secret_references_rolls_it(
        self, chart: Chart, rendered: dict[str, Rendered]
    ) -> None:
        def annotations(r: Rendered) -> dict[str, str]:
            result: dict[str, str] = r.get("Deployment", self.NAME)["spec"]["template"]["metadata"][
                "annotations"
            ]
            return result

        before = annotations(rendered["production"])
        pacs = chart.template("production", {"secrets": {"pacs": {"existingSecret": "pacs-2"}}})
        assert {k for k, v in annotations(pacs).items() if before[k] != v} == {
            "checksum/secret-refs"
        }
        kafka = chart.template(
            "production", {"secrets": {"kafkaIntegrity": {"existingSecret": "integrity-2"}}}
        )
        assert {k for k, v in annotations(kafka).items() if before[k] != v} == {
            "checksum/kafka-refs"
        }
        # the consumers' pods do not roll for the watcher's Kafka user
        ledger = f"{RELEASE}-audit-ledger"
        assert (
            kafka.get("StatefulSet", ledger)["spec"]["template"]["metadata"]["annotations"]
            == rendered["production"].get("StatefulSet", ledger)["spec"]["template"]["metadata"][
                "annotations"
            ]
        )

    def test_disabled_renders_nothing(self, chart: Chart, rendered: dict[str, Rendered]) -> None:
        # and then needs no Kafka user of its own
        off = chart.template(
            "minimal",
            {
                "integrity": {"watch": {"enabled": False}},
                "secrets": {"kafkaIntegrity": {"username": "", "existingSecret": ""}},
            },
        )
        assert [d for d in off.docs if _component(d).startswith("integrity")] == []
        assert len(off.docs) == len(rendered["minimal"].docs) - 3  # Deployment, PVC, policy
        assert [d for d in rendered["bundle"].docs if _component(d).startswith("integrity")] == []


class TestIntegritySweep:
    """`telerad integrity verify` on a schedule: off by default, on in the production scenario."""

    NAME = f"{RELEASE}-integrity-verify"

    def test_off_by_default(self, rendered: dict[str, Rendered]) -> None:
        for scenario in ("minimal", "bundle", "strimzi-mtls"):
            assert [d for d in rendered[scenario].docs if _component(d) == "integrity-verify"] == []

    def test_a_bounded_sweep_that_fails_once_on_a_finding(
        self, rendered: dict[str, Rendered]
    ) -> None:
        cronjob = rendered["production"].get("CronJob", self.NAME)
        assert cronjob["spec"]["schedule"] == "41 2 * * *"
        assert cronjob["spec"]["timeZone"] == "Etc/UTC"
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        job = cronjob["spec"]["jobTemplate"]["spec"]
        assert job["backoffLimit"] == 0
        assert job["activeDeadlineSeconds"] == 21600
        pod = _cronjob_pod(cronjob)
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["args"] == ["integrity", "verify"]
        env = _env(container)
        assert env["TELERAD_STREAMS__INTEGRITY_SWEEP_PER_SECOND"] == "20"
        assert "livenessProbe" not in container
        assert "TELERAD_STREAMS__HEALTH_PORT" not in env

    def test_reads_the_ledger_on_its_node(self, rendered: dict[str, Rendered]) -> None:
        production = rendered["production"]
        ledger = production.get("StatefulSet", f"{RELEASE}-audit-ledger")
        pod = _cronjob_pod(production.get("CronJob", self.NAME))
        volumes = {v["name"]: v for v in pod["volumes"]}
        (template,) = ledger["spec"]["volumeClaimTemplates"]
        claim = f"{template['metadata']['name']}-{ledger['metadata']['name']}-0"
        assert volumes["ledger"]["persistentVolumeClaim"] == {"claimName": claim}
        container = pod["containers"][0]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "ledger"]
        ledger_env = _env(_pod(ledger)["containers"][0])
        assert (
            _env(container)["TELERAD_STREAMS__LEDGER_PATH"]
            == (ledger_env["TELERAD_STREAMS__LEDGER_PATH"])
        )
        assert _env(container)["TELERAD_STREAMS__LEDGER_PATH"].startswith(mount["mountPath"] + "/")
        (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert term["labelSelector"]["matchLabels"] == ledger["spec"]["selector"]["matchLabels"]

    def test_pacs_access_and_no_kafka(self, rendered: dict[str, Rendered]) -> None:
        pod = _cronjob_pod(rendered["production"].get("CronJob", self.NAME))
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert set(volumes) == {"tmp", "ledger", "secrets"}
        files = [
            i["path"]
            for s in volumes["secrets"]["projected"]["sources"]
            for i in s["secret"]["items"]
        ]
        assert files == ["TELERAD_PACS"]
        env = _env(pod["containers"][0])
        assert not [k for k in env if k.startswith("TELERAD_KAFKA__")]
        annotations = rendered["production"].get("CronJob", self.NAME)["spec"]["jobTemplate"][
            "spec"
        ]["template"]["metadata"]["annotations"]
        assert {"checksum/env", "checksum/secret-refs"} == set(annotations)

    def test_restricted_like_every_pod(self, rendered: dict[str, Rendered]) -> None:
        pod = _cronjob_pod(rendered["production"].get("CronJob", self.NAME))
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        container = pod["containers"][0]
        for key, wanted in _RESTRICTED.items():
            assert container["securityContext"].get(key) == wanted, key
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
        for mount in container["volumeMounts"]:
            if mount["name"] == "secrets":
                assert mount["readOnly"] is True

    def test_egress_to_dns_and_the_pacs_only(self, rendered: dict[str, Rendered]) -> None:
        spec = rendered["production"].get("NetworkPolicy", self.NAME)["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
            "integrity-verify"
        )
        assert spec["ingress"] == []
        assert [[p["port"] for p in r["ports"]] for r in spec["egress"]] == [[53, 53], [443]]
