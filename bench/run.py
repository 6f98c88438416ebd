"""The benchmark harness: start the real stack, load it phase by phase, report, stop everything.

``python -m bench [--quick] [--profile | --no-profile] [--wait-quiet SECONDS]``

Phases (each bounded in request count and in time):

1. the stack (Kafka, OPA, Keycloak, Orthanc) as local processes, plus a bench-only 20 MB CT
   study stored in Orthanc, added to a facts file of the bench's own and to ada's worklist;
2. OPA alone: the broker's own policy input, straight to OPA's data API, 1/16/64 clients;
3. the broker (``telerad serve``, its own process; then 2 uvicorn workers): ``POST
   /api/decisions`` and ``POST /api/links`` end to end at 1/16/64 clients;
4. redemption: the large study through a link vs straight from Orthanc;
5. audit: events/s into Kafka from one process, and emit → ledger append latency with the
   ledger consumer running;
6. the Merkle ledger: appends/s, proofs at 10^4..10^6 leaves, verify of 10^6.

Writes ``bench/results/<timestamp>.json`` and prints a table (see ``bench/README.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

from bench import fixtures
from bench.broker_proc import BrokerProcess, bench_keys, start_broker
from bench.httpload import LevelResult, Target, build_request, run_level
from bench.plan import FULL, QUICK, Plan
from bench.procstat import CpuMeter
from bench.profiling import (
    BROKER_BUCKETS,
    LEDGER_BUCKETS,
    Profiler,
    py_spy,
    py_spy_version,
    summarize,
)
from bench.report import evaluate_targets, render_table

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
_OPA_PATH = "/v1/data/telerad/access/decision"
_STUDY_KEY = "stolaf-ct-chest"  # ada is assigned: the policy allows, with obligations
AUDIT_VARIANTS = (
    "linger-0",  # the producer sends at once instead of lingering 2 ms
    "confluent-kafka",  # librdkafka instead of kafka-python (same acknowledgement contract)
)
PACED_VARIANTS = ("linger-0",)  # per-event latency at a steady rate
BROKER_WHATIFS = ("linger-0",)  # the broker as it is, but with no producer linger
_NOISY = 25.0  # % of one core used outside the bench during a level: measure it again


# The load phases send thousands of issuances and redemptions as one person, which the broker's
# per-person rate limits exist to stop; they measure throughput, so they raise those limits.
# The default limits' effect on a viewer is measured by tests/integration/test_rate_limits.py.
LOAD_LIMITS = {
    "TELERAD_RATE_LIMITS__ISSUE_BURST": "1000000000",
    "TELERAD_RATE_LIMITS__REDEEM_BURST": "1000000000",
}


class Progress:
    """``[bench +12.3s] ...`` lines on stderr."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        """Print one progress line."""
        elapsed = time.monotonic() - self.started
        print(f"[bench +{elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _allowed(status: int, body: bytes) -> bool:
    return status == 200 and b'"allow":true' in body


def _linked(status: int, body: bytes) -> bool:
    return status == 200 and b'"dicomweb_root"' in body


class Bench:
    """One run: what it started (to stop it all) and what it measured."""

    def __init__(
        self,
        plan: Plan,
        results_dir: Path,
        *,
        wait_quiet: float,
        keep: bool,
        whatif_path: str | None = None,
    ) -> None:
        self.plan = plan
        self.whatif_path = whatif_path
        self.results_dir = results_dir
        self.wait_quiet = wait_quiet
        self.keep = keep
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"telerad-bench-{self.stamp}-"))
        self.profiles_dir = results_dir / f"{self.stamp}-profiles"
        self.progress = Progress()
        self.stack: Any = None
        self.brokers: list[BrokerProcess] = []
        self.children: list[subprocess.Popen[bytes]] = []
        self.env: dict[str, str] = {}
        self.cpu = CpuMeter()
        self.token_pool: fixtures.TokenPool | None = None
        self.results: dict[str, Any] = {
            "bench_version": 1,
            "mode": plan.mode,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "plan": plan.as_dict(),
            "notes": [],
        }

    # -- set-up ------------------------------------------------------------------------------

    def start_stack(self) -> None:
        """Start Kafka, OPA, Keycloak and Orthanc (the stack's own progress lines follow)."""
        from devstack.stack import Stack

        self.progress("starting the stack (Kafka, OPA, Keycloak, Orthanc)")
        # The audit-emit benchmarks hand their clients only --bootstrap (and the confluent-kafka
        # variant speaks librdkafka's config), so the bench's Kafka stays PLAINTEXT: TLS and
        # SCRAM costs are not measured here yet. TELERAD_STACK_KAFKA_PLAINTEXT=0 overrides.
        os.environ.setdefault("TELERAD_STACK_KAFKA_PLAINTEXT", "1")
        # Likewise Orthanc: the bench's own HTTP client (bench.httpload) speaks no TLS, and the
        # figures so far compare plain HTTP on both sides. TELERAD_STACK_ORTHANC_PLAINTEXT=0
        # runs it over HTTPS (the bench's httpx clients would then need the stack's CA).
        os.environ.setdefault("TELERAD_STACK_ORTHANC_PLAINTEXT", "1")
        self.stack = Stack.start(run_dir=self.run_dir / "stack")
        self.env = self.stack.broker_env()
        for name, service in self.stack.services.items():
            if service.process is not None:
                self.cpu.add(name, service.process.pid)
        self.results["stack"] = {
            "backends": self.stack.backends,
            "endpoints": {n: s.endpoints for n, s in self.stack.services.items()},
        }
        self.progress("stack ready")

    def describe_machine(self) -> None:
        """CPU, RAM, versions (see :func:`bench.machine.describe`)."""
        from bench.machine import describe

        pids = {n: s.process.pid if s.process else None for n, s in self.stack.services.items()}
        machine = describe(pids, (self._orthanc_url(), self._orthanc_auth()))
        machine["profiler"] = py_spy_version()
        self.results["machine"] = machine

    def _orthanc_url(self) -> str:
        return str(self.stack.services["orthanc"].endpoints["url"])

    def _orthanc_auth(self) -> tuple[str, str]:
        extra = self.stack.services["orthanc"].extra
        return (str(extra["user"]), str(extra["password"]))

    def _realm(self) -> str:
        return str(self.stack.services["keycloak"].endpoints["hospital-a"])

    def _tokens(self) -> list[str]:
        if self.token_pool is None:
            self.token_pool = fixtures.TokenPool(self._realm())
        return self.token_pool.tokens()

    def prepare(self) -> None:
        """The large study in Orthanc, its facts, ada's assignment in OPA, shared broker keys."""
        plan = self.plan
        self.progress(f"building the bench study ({plan.study_instances} x 512x512 16-bit CT)")
        study = fixtures.build_large_study(plan.study_instances)
        fixtures.store_study(self._orthanc_url(), self._orthanc_auth(), study)
        self.progress(
            f"building the viewer study ({plan.viewer_frames} x {plan.viewer_size}x"
            f"{plan.viewer_size} 16-bit CT, one frame each)"
        )
        viewer = fixtures.build_large_study(plan.viewer_frames, plan.viewer_size, name="viewer-ct")
        fixtures.store_study(self._orthanc_url(), self._orthanc_auth(), viewer)
        self.viewer_study = viewer
        # The read-path integrity check (issue 15): the viewer study's fingerprints on the
        # fingerprint topic, so every frame read through a link is hashed and compared;
        # BENCH_INTEGRITY_CHECK=false runs the broker with the check off, for the comparison.
        check = os.environ.get("BENCH_INTEGRITY_CHECK", "true")
        self.env["TELERAD_INTEGRITY__CHECK_READS"] = check
        published = fixtures.publish_fingerprints(
            self._orthanc_url(),
            self._orthanc_auth(),
            viewer,
            self.env["TELERAD_KAFKA__BOOTSTRAP_SERVERS"],
            self.env.get("TELERAD_KAFKA__FINGERPRINT_TOPIC", "telerad.fingerprints.v1"),
        )
        self.progress(f"integrity check on reads: {check} ({published} fingerprints published)")
        self.results["integrity_check_reads"] = check
        facts = fixtures.bench_facts_file(
            Path(self.env["TELERAD_FACTS_FILE"]),
            self.run_dir / "bench-facts.json",
            study.study_uid,
            viewer.study_uid,
        )
        opa = self.env["TELERAD_OPA__URL"]
        assigned = fixtures.allow_in_policy(opa, study.study_uid)
        fixtures.allow_in_policy(opa, viewer.study_uid)
        self.env |= {"TELERAD_FACTS_FILE": str(facts)} | bench_keys()
        token = self._tokens()[0]
        key = fixtures.b64u_key(self.env["TELERAD_PSEUDONYM_KEY"])
        policy_input = uvloop.run(
            fixtures.policy_input(
                self.env, token, study.study_uid, operations=("view", "download"), pseudonym_key=key
            )
        )
        reasons = fixtures.check_allowed(opa, policy_input)
        self.study = study
        self.results["study"] = {
            "study_uid": study.study_uid,
            "instances": len(study.instances),
            "bytes": study.nbytes,
            "assigned_in_opa_data": assigned,
            "allowed_because": reasons,
        }
        self.results["viewer_study"] = {
            "study_uid": viewer.study_uid,
            "frames": len(viewer.instances),
            "bytes": viewer.nbytes,
        }
        self.progress(
            f"bench study stored: {study.nbytes / 1e6:.1f} MB; the policy allows ada "
            f"({', '.join(reasons)})"
        )

    def wait_until_quiet(self) -> None:
        """Wait (up to ``--wait-quiet`` s) until little runs outside the stack; note it."""
        deadline = time.monotonic() + self.wait_quiet
        while True:
            stop = self.cpu.start()
            time.sleep(3)
            other = stop(None)["other"]
            if other < 25 or time.monotonic() >= deadline:
                break
            self.progress(f"machine busy outside the bench ({other:.0f}% of a core); waiting")
        self.results["machine"]["other_cpu_before_percent"] = other
        if other >= 25:
            self.note(
                f"the machine was busy outside the bench at the start ({other:.0f}% of one "
                "core): figures are pessimistic; see cpu_percent.other per level"
            )

    def note(self, text: str) -> None:
        """A remark kept in the results (and printed under the table)."""
        self.results["notes"].append(text)
        self.progress("note: " + text)

    # -- HTTP phases -------------------------------------------------------------------------

    def _level(
        self,
        label: str,
        url: str,
        requests: list[bytes],
        concurrency: int,
        count: int,
        check: Callable[[int, bytes], bool],
    ) -> LevelResult:
        plan = self.plan
        attempts: list[LevelResult] = []
        for _ in range(1 + plan.noisy_retries):
            attempt = uvloop.run(
                run_level(
                    Target.of(url),
                    requests,
                    concurrency=concurrency,
                    count=count,
                    time_cap=plan.time_cap,
                    warmup=plan.warmup,
                    check=check,
                    cpu=self.cpu.start,
                )
            )
            attempts.append(attempt)
            other = attempt.cpu_percent.get("other", 0.0)
            if other < _NOISY:
                break
            self.progress(
                f"{label} c={concurrency}: {other:.0f}% of a core went to other work on the "
                "machine meanwhile; measuring again"
            )
        # the attempt the rest of the machine disturbed least
        result = min(attempts, key=lambda a: a.cpu_percent.get("other", 0.0))
        result.other_cpu_of_attempts = [a.cpu_percent.get("other", 0.0) for a in attempts]
        lat = result.latency
        self.progress(
            f"{label} c={concurrency}: {result.rps:.0f} req/s, p50 {lat['p50_ms']:.1f} ms, "
            f"p99 {lat['p99_ms']:.1f} ms, errors {result.errors}/{result.requests}"
            + (" (time cap)" if result.capped else "")
        )
        if result.errors:
            self.note(
                f"{label} c={concurrency}: {result.errors} errors, first: {result.first_error}"
            )
        return result

    def opa_phase(self) -> None:
        """OPA alone, with the exact input the broker builds for ada's link request."""
        token = self._tokens()[0]
        study_uid = fixtures.sample_uid(_STUDY_KEY)
        pseudonym_key = fixtures.b64u_key(self.env["TELERAD_PSEUDONYM_KEY"])
        policy_input = uvloop.run(
            fixtures.policy_input(self.env, token, study_uid, pseudonym_key=pseudonym_key)
        )
        url = self.env["TELERAD_OPA__URL"] + _OPA_PATH
        body = json.dumps({"input": policy_input}).encode()
        raw = [build_request("POST", url, body=body, headers={"Content-Type": "application/json"})]
        self.progress("OPA alone: POST " + _OPA_PATH)
        levels = [
            self._level("OPA", url, raw, c, self.plan.opa_count, _allowed).as_dict()
            for c in self.plan.levels
        ]
        self.results["opa"] = {"input": policy_input, "levels": levels, "variants": []}
        from bench.calibrate import loadgen_cost

        cost = uvloop.run(loadgen_cost(url, body, count=min(1000, self.plan.opa_count)))
        self.results["loadgen"] = cost
        self.progress(
            f"load generator cost: {cost['builtin_cpu_ms_per_request']:.3f} ms CPU/request "
            f"(built-in) vs {cost['httpx_cpu_ms_per_request']:.3f} (httpx.AsyncClient)"
        )
        if self.plan.variants:
            self.opa_variants(body)

    def opa_variants(self, body: bytes) -> None:
        """What-if: the same OPA without request logs, and without decision logs too."""
        from bench.opa_variant import start_quiet_opa

        service = self.stack.services["opa"]
        if service.process is None or service.process.pid is None:
            return
        for decision_logs in (True, False):
            name = "no request log" + ("" if decision_logs else ", no decision log")
            log = self.run_dir / "logs" / f"opa-{name.replace(' ', '-').replace(',', '')}.log"
            process, url = start_quiet_opa(service.process.pid, log, decision_logs=decision_logs)
            self.cpu.add("opa_variant", process.pid)
            try:
                url += _OPA_PATH
                raw = [
                    build_request(
                        "POST", url, body=body, headers={"Content-Type": "application/json"}
                    )
                ]
                levels = [
                    self._level(f"OPA what-if ({name})", url, raw, c, self.plan.opa_count, _allowed)
                    for c in self.plan.levels
                    if c > 1
                ]
            finally:
                self.cpu.remove("opa_variant")
                process.stop()
            self.results["opa"]["variants"].append(
                {"variant": name, "levels": [lv.as_dict() for lv in levels]}
            )

    def _broker_requests(self, broker: BrokerProcess, path: str, tokens: list[str]) -> list[bytes]:
        body = json.dumps({"study_uid": fixtures.sample_uid(_STUDY_KEY), "operations": ["view"]})
        return [
            build_request(
                "POST",
                broker.url + path,
                body=body.encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {t}"},
            )
            for t in tokens
        ]

    def broker_phase(self, workers: int, whatif: str | None = None) -> None:
        """Decisions and link issuance through one broker configuration."""
        key = f"{workers}w" + (f" what-if {whatif}" if whatif else "")
        self.progress(f"starting the broker ({key})")
        broker = start_broker(
            self.env | LOAD_LIMITS,
            self.run_dir,
            workers=workers,
            log_name=f"broker-{key.replace(' ', '-')}",
            whatif=whatif,
            whatif_path=self.whatif_path,
        )
        self.brokers.append(broker)
        self.cpu.add("broker", broker.pgid)
        entry: dict[str, Any] = {
            "command": " ".join(broker.command[1:]),
            "workers": workers,
            "whatif": whatif,
        }
        try:
            for name, path, check in (
                ("decisions", "/api/decisions", _allowed),
                ("links", "/api/links", _linked),
            ):
                levels = []
                for c in self.plan.levels:
                    requests = self._broker_requests(broker, path, self._tokens())
                    label = f"broker {key} {path}"
                    levels.append(
                        self._level(label, broker.url, requests, c, self.plan.broker_count, check)
                    )
                entry[name] = [level.as_dict() for level in levels]
            if workers == 1 and not whatif:
                self.redemption_phase(broker)
                self.viewer_phase(broker)
            if self.plan.profile and not whatif:
                entry["profiles"] = self.profile_broker(broker, workers)
        finally:
            self.cpu.remove("broker")
            broker.stop()
            self.brokers.remove(broker)
        self.results.setdefault("broker", {})[key] = entry

    def profile_broker(self, broker: BrokerProcess, workers: int) -> dict[str, Any]:
        """Re-run link issuance at the highest concurrency (and a redemption) under py-spy."""
        if py_spy() is None:
            self.note("py-spy is not installed: no profiles (pip install py-spy)")
            return {}
        out: dict[str, Any] = {}
        c = max(self.plan.levels)
        tokens = self._tokens()
        jobs: list[tuple[str, Callable[[], Any]]] = [
            (
                f"links-c{c}",
                lambda: self._level(
                    f"[profiled] broker {workers}w /api/links",
                    broker.url,
                    self._broker_requests(broker, "/api/links", tokens),
                    c,
                    self.plan.broker_count,
                    _linked,
                ),
            )
        ]
        if workers == 1:
            reps = 4 * self.plan.redeem_repetitions  # enough link downloads for a profile
            jobs.append(("redeem-c1", lambda: self._redeem(broker, 1, reps)))
            jobs.append(("viewer", lambda: self._viewer_opens(broker, 3 * self.plan.viewer_opens)))
        for name, job in jobs:
            path = self.profiles_dir / f"broker-{workers}w-{name}.txt"
            profiler = Profiler(broker.pgid or 0, path)
            profiler.start()
            time.sleep(0.5)  # py-spy attaches
            try:
                job()
            finally:
                written = profiler.stop()
            if written:
                out[name] = {
                    # relative to the checkout when the results are kept in it
                    "raw": str(
                        written.relative_to(ROOT) if written.is_relative_to(ROOT) else written
                    ),
                    **summarize(written, buckets=BROKER_BUCKETS),
                }
                self.progress(f"profile written: {written}")
        return out

    # -- redemption --------------------------------------------------------------------------

    def _issue_link(self, broker: BrokerProcess, token: str) -> str:
        import httpx

        response = httpx.post(
            f"{broker.url}/api/links",
            json={"study_uid": self.study.study_uid, "operations": ["view", "download"]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["url"])

    def _redeem(self, broker: BrokerProcess, concurrency: int, repetitions: int) -> dict[str, Any]:
        from bench.redeem import compare

        token = self._tokens()[0]
        link = self._issue_link(broker, token)
        direct = f"{self.env['TELERAD_PACS__URL']}/studies/{self.study.study_uid}"
        stop = self.cpu.start()
        result = uvloop.run(
            compare(
                direct_url=direct,
                direct_auth=self._orthanc_auth(),
                link_url=link,
                bearer=token,
                repetitions=repetitions,
                concurrency=concurrency,
            )
        )
        result["cpu_percent"] = stop(None)
        return result

    def redemption_phase(self, broker: BrokerProcess) -> None:
        """The large study through a link vs straight from Orthanc."""
        out = []
        for c in self.plan.redeem_concurrency:
            result = self._redeem(broker, c, self.plan.redeem_repetitions)
            d, link = result["direct"], result["link"]
            self.progress(
                f"redemption c={c}: direct {d['mb_per_s']:.0f} MB/s, link {link['mb_per_s']:.0f} "
                f"MB/s ({100 * result['throughput_ratio']:.0f}%), TTFB p50 "
                f"{d['ttfb']['p50_ms']:.1f} / {link['ttfb']['p50_ms']:.1f} ms"
            )
            if not result["same_size"] or d["errors"] or link["errors"]:
                self.note(f"redemption c={c}: errors or sizes differ: {result}")
            out.append(result)
        self.results["redemption"] = out

    # -- before/after: the broker of an earlier commit on the same stack ---------------------

    def _export_source(self, rev: str) -> tuple[Path, str]:
        """``git archive`` of ``rev`` into the run directory (nothing in the checkout changes)."""
        commit = subprocess.run(
            ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True
        )
        if commit.returncode != 0:
            raise ValueError(f"--compare-with: no such revision {rev!r}")
        short = commit.stdout.strip()
        target = self.run_dir / f"src-{short}"
        if not target.exists():
            target.mkdir(parents=True)
            archive = subprocess.run(
                ["git", "archive", "--format=tar", short, "broker"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        return target, short

    def compare_phase(self, rev: str) -> None:
        """Issuance at every level and the viewer pattern, through the broker of ``rev``."""
        source, short = self._export_source(rev)
        key = f"1w at {short}"
        self.progress(f"starting the broker of {short} ({rev}) for the before/after comparison")
        broker = start_broker(
            self.env | LOAD_LIMITS, self.run_dir, log_name=f"broker-{short}", source_root=source
        )
        self.brokers.append(broker)
        self.cpu.add("broker", broker.pgid)
        entry: dict[str, Any] = {"revision": short, "asked_as": rev, "workers": 1}
        try:
            levels = []
            for c in self.plan.levels:
                requests = self._broker_requests(broker, "/api/links", self._tokens())
                levels.append(
                    self._level(
                        f"broker {key} /api/links",
                        broker.url,
                        requests,
                        c,
                        self.plan.broker_count,
                        _linked,
                    )
                )
            entry["links"] = [level.as_dict() for level in levels]
            entry["viewer"] = self._viewer(broker)
        finally:
            self.cpu.remove("broker")
            broker.stop()
            self.brokers.remove(broker)
        self.results.setdefault("compare", {})[key] = entry

    # -- the viewer pattern ------------------------------------------------------------------

    def _audit_offsets(self) -> dict[Any, int]:
        from kafka import KafkaConsumer, TopicPartition

        topic = self.env.get("TELERAD_KAFKA__AUDIT_TOPIC", "telerad.audit.v1")
        consumer = KafkaConsumer(bootstrap_servers=self.env["TELERAD_KAFKA__BOOTSTRAP_SERVERS"])
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            return dict(consumer.end_offsets(partitions))
        finally:
            consumer.close()

    def _audit_kinds_since(self, before: dict[Any, int]) -> dict[str, int]:
        """Audit events written since ``before`` (end offsets), counted by CloudEvents type."""
        from kafka import KafkaConsumer, TopicPartition

        after = self._audit_offsets()
        remaining = sum(after[p] - before.get(p, 0) for p in after)
        kinds: dict[str, int] = {}
        if remaining <= 0:
            return kinds
        consumer = KafkaConsumer(
            bootstrap_servers=self.env["TELERAD_KAFKA__BOOTSTRAP_SERVERS"],
            consumer_timeout_ms=3000,
        )
        try:
            consumer.assign(list(after))
            for partition in after:
                consumer.seek(partition, before.get(partition, 0))
            for record in consumer:
                if record.offset >= after[TopicPartition(record.topic, record.partition)]:
                    continue
                ce_type = dict(record.headers).get("ce_type", b"?").decode()
                kind = ce_type.removeprefix("org.telerad.").removesuffix(".v1")
                kinds[kind] = kinds.get(kind, 0) + 1
                remaining -= 1
                if remaining <= 0:
                    break
        finally:
            consumer.close()
        return kinds

    def viewer_phase(self, broker: BrokerProcess) -> None:
        """A study opened as OHIF opens it: metadata, then every frame over six connections."""
        result = self._viewer(broker)
        self.results["viewer"] = result

    def _viewer(self, broker: BrokerProcess) -> dict[str, Any]:
        from bench.viewer import open_study, side_by_side

        plan = self.plan
        study = self.viewer_study
        token = self._tokens()[0]

        async def new_link() -> tuple[str, str]:
            url = await asyncio.to_thread(self._issue_link_for, broker, token, study.study_uid)
            return url.rsplit("/studies/", 1)[0], url

        result = uvloop.run(
            side_by_side(
                direct_root=self.env["TELERAD_PACS__URL"],
                direct_auth=self._orthanc_auth(),
                study_uid=study.study_uid,
                new_link_root=new_link,
                bearer=token,
                opens=plan.viewer_opens,
                connections=plan.viewer_connections,
                cpu=self.cpu,
            )
        )
        # audit events of one study open through a link: issuance, then the open itself
        time.sleep(2.5)  # the last transfer records of the opens above are flushed first
        before = self._audit_offsets()
        root, _ = uvloop.run(new_link())
        issued = self._audit_kinds_since(before)
        before = self._audit_offsets()
        uvloop.run(open_study(root, study.study_uid, {"Authorization": f"Bearer {token}"}, 6))
        time.sleep(2.5)  # the transfer records are flushed every second
        opened = self._audit_kinds_since(before)
        result["audit_events_issue"] = issued
        result["audit_events_open"] = opened
        result["audit_events_per_open"] = sum(opened.values())
        d, link = result["direct"], result["link"]
        self.progress(
            f"viewer ({d['frames_per_open']} frames, {plan.viewer_connections} connections): "
            f"direct {d['frames_per_s']:.0f} frames/s, link {link['frames_per_s']:.0f} frames/s "
            f"({100 * result['frames_per_s_ratio']:.0f}%), p50 {d['frame']['p50_ms']:.2f} / "
            f"{link['frame']['p50_ms']:.2f} ms, audit events per open "
            f"{result['audit_events_per_open']} ({opened})"
        )
        if d["errors"] or link["errors"] or not result["same_bytes"]:
            self.note(f"viewer: errors or sizes differ: {result}")
        return result

    def _viewer_opens(self, broker: BrokerProcess, opens: int) -> None:
        """Study opens through fresh links only (what the viewer profile samples)."""
        from bench.viewer import open_study

        token = self._tokens()[0]
        uid = self.viewer_study.study_uid
        for _ in range(opens):
            root = self._issue_link_for(broker, token, uid).rsplit("/studies/", 1)[0]
            headers = {"Authorization": f"Bearer {token}"}
            uvloop.run(open_study(root, uid, headers, self.plan.viewer_connections))

    def _issue_link_for(self, broker: BrokerProcess, token: str, study_uid: str) -> str:
        import httpx

        response = httpx.post(
            f"{broker.url}/api/links",
            json={"study_uid": study_uid, "operations": ["view"]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["url"])

    # -- audit -------------------------------------------------------------------------------

    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def _child_env(self, whatif: bool = False) -> dict[str, str]:
        parts = [str(ROOT), *([self.whatif_path] if whatif and self.whatif_path else [])]
        path = os.pathsep.join([*parts, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return dict(os.environ) | {"PYTHONPATH": path}

    def available(self, variant: str) -> bool:
        """Whether the packages a what-if variant needs import (with ``--whatif-path``)."""
        needs = {"confluent-kafka": "confluent_kafka"}
        modules = [m for f, m in needs.items() if f in variant.split("+")]
        if not modules:
            return True
        done = subprocess.run(
            [sys.executable, "-c", "import " + ", ".join(modules)],
            env=self._child_env(whatif=True),
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            self.note(f"what-if {variant} skipped: needs {', '.join(modules)} (--whatif-path)")
        return done.returncode == 0

    def _emit(self, topic: str, *args: str, profile: Path | None = None) -> dict[str, Any]:
        bootstrap = self.env["TELERAD_KAFKA__BOOTSTRAP_SERVERS"]
        argv = self._python("bench.audit_emit", "--bootstrap", bootstrap, "--topic", topic, *args)
        exe = py_spy()
        if profile is not None and exe is not None:
            profile.parent.mkdir(parents=True, exist_ok=True)
            argv = [exe, "record", "--gil", "--rate", "200", "--format", "raw"]
            argv += ["--output", str(profile), "--", *self._python("bench.audit_emit")]
            argv += ["--bootstrap", bootstrap, "--topic", topic, *args]
        stop = self.cpu.start()
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=600,
            env=self._child_env(whatif="--variant" in args),
            check=False,
        )
        cpu = stop(None)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"audit emitter failed ({done.returncode}): {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        result["cpu_percent"] = cpu  # the emitter itself is in "other" (and reports its own)
        return result

    def audit_phase(self) -> None:
        """Events/s into Kafka from one process; emit → ledger append with the consumer on."""
        plan = self.plan
        bootstrap = self.env["TELERAD_KAFKA__BOOTSTRAP_SERVERS"]
        topic = f"telerad.bench.audit.{self.stamp.lower()}"
        status, out = self.run_dir / "ledger-status.json", self.run_dir / "ledger-result.json"
        argv = self._python(
            "bench.ledger_worker",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--heads-topic",
            f"{topic}.heads",
            "--group",
            f"bench-ledger-{self.stamp.lower()}",
            "--ledger",
            str(self.run_dir / "ledger.sqlite3"),
            "--status",
            str(status),
            "--out",
            str(out),
        )
        self.progress("audit: starting the ledger consumer (ConsumerRunner + LedgerConsumer)")
        log = (self.run_dir / "logs" / "ledger-worker.log").open("ab")
        worker = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._child_env(),
            start_new_session=True,
        )
        self.children.append(worker)
        self.cpu.add("ledger_consumer", worker.pid)
        emitted = 0

        def appended() -> int:
            try:
                return int(json.loads(status.read_text())["appended"])
            except (OSError, ValueError, KeyError):
                return 0

        def acked(result: dict[str, Any]) -> int:
            # only acknowledged events can reach the ledger (failed emits are counted apart)
            if result["errors"]:
                self.note(
                    f"audit {result['phase']}: {result['errors']} of {result['events']} emits "
                    "were not acknowledged"
                )
            warm = int(result.get("warmup_errors", 0))
            return int(result["events"]) - int(result["errors"]) - warm

        def caught_up(timeout: float) -> float | None:
            started = time.monotonic()
            while time.monotonic() - started < timeout:
                if appended() >= emitted:
                    return round(time.monotonic() - started, 2)
                if worker.poll() is not None:
                    raise RuntimeError("the ledger worker exited; see its log")
                time.sleep(0.1)
            return None

        audit: dict[str, Any] = {"topic": topic, "saturate": [], "variants": []}
        self.results["audit"] = audit  # filled in as it goes (kept if the run is interrupted)
        warmup = 500
        try:
            for c in plan.audit_concurrency:
                args = ["--mode", "saturate", "--phase", f"saturate-c{c}"]
                args += ["--count", str(plan.audit_count), "--concurrency", str(c)]
                result = self._emit(topic, *args, "--warmup", str(warmup))
                emitted += acked(result) + warmup
                result["ledger_caught_up_after_s"] = caught_up(60)
                audit["saturate"].append(result)
                self.progress(
                    f"audit emit c={c}: {result['events_per_s']:.0f} events/s acknowledged, "
                    f"ack p99 {result['ack_latency']['p99_ms']:.0f} ms, ledger caught up "
                    f"{result['ledger_caught_up_after_s']} s later"
                )
            count = int(plan.paced_rate * plan.paced_seconds)
            args = ["--mode", "paced", "--phase", "paced", "--rate", str(plan.paced_rate)]
            result = self._emit(topic, *args, "--count", str(count), "--warmup", str(warmup))
            emitted += acked(result) + warmup
            result["ledger_caught_up_after_s"] = caught_up(60)
            audit["paced"] = result
            self.progress(
                f"audit paced {plan.paced_rate:.0f}/s: ack p99 "
                f"{result['ack_latency']['p99_ms']:.0f} ms"
            )
            for variant in PACED_VARIANTS if plan.variants else ():
                args = ["--mode", "paced", "--phase", f"paced-{variant}"]
                args += ["--rate", str(plan.paced_rate), "--variant", variant]
                result = self._emit(topic, *args, "--count", str(count), "--warmup", str(warmup))
                emitted += acked(result) + warmup
                result["ledger_caught_up_after_s"] = caught_up(60)
                audit.setdefault("paced_variants", []).append(result)
                self.progress(
                    f"audit paced what-if {variant}: ack p50 {result['ack_latency']['p50_ms']:.1f}"
                    f" ms, p99 {result['ack_latency']['p99_ms']:.1f} ms"
                )
            if plan.variants:
                c = max(plan.audit_concurrency)
                for variant in filter(self.available, AUDIT_VARIANTS):
                    args = ["--phase", f"variant-{variant}", "--count", str(plan.audit_count)]
                    args += ["--concurrency", str(c), "--variant", variant]
                    # the fastest emitter can leave the ledger consumer behind: profile it then
                    behind = plan.profile and variant.startswith("confluent") and py_spy()
                    consumer_profile = Profiler(
                        worker.pid, self.profiles_dir / "ledger-consumer-behind.txt"
                    )
                    if behind:
                        consumer_profile.start()
                    result = self._emit(topic, *args, "--warmup", str(warmup))
                    emitted += acked(result) + warmup
                    result["ledger_caught_up_after_s"] = caught_up(60)
                    written = consumer_profile.stop() if behind else None
                    if written:
                        audit["consumer_profile"] = {
                            # relative to the checkout when the results are kept in it
                            "raw": str(
                                written.relative_to(ROOT)
                                if written.is_relative_to(ROOT)
                                else written
                            ),
                            **summarize(written, buckets=LEDGER_BUCKETS),
                        }
                    audit["variants"].append(result)
                    self.progress(f"audit what-if {variant}: {result['events_per_s']:.0f} events/s")
            if plan.profile and py_spy() is not None:
                c = max(plan.audit_concurrency)
                path = self.profiles_dir / "audit-emit.txt"
                args = ["--phase", "profiled", "--count", str(plan.audit_count)]
                result = self._emit(
                    topic, *args, "--concurrency", str(c), "--warmup", "0", profile=path
                )
                emitted += acked(result)
                caught_up(60)
                if path.exists():
                    audit["profile"] = {
                        "raw": str(path.relative_to(ROOT)),
                        "events_per_s_under_profiler": result["events_per_s"],
                        **summarize(path, buckets=BROKER_BUCKETS),
                    }
                    self.progress(f"profile written: {path}")
        finally:
            self.cpu.remove("ledger_consumer")
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=5)
            self.children.remove(worker)
            log.close()
        if out.exists():
            audit["ledger_consumer"] = json.loads(out.read_text())
            paced = audit["ledger_consumer"]["latency_by_phase"].get("paced", {})
            self.progress(
                f"audit emit → ledger append at {plan.paced_rate:.0f}/s: p50 "
                f"{paced.get('p50_ms', 0):.0f} ms, p99 {paced.get('p99_ms', 0):.0f} ms"
            )
        else:
            self.note("the ledger worker wrote no result; see logs/ledger-worker.log")
        self.results["audit"] = audit

    # -- ledger ------------------------------------------------------------------------------

    def ledger_phase(self) -> None:
        """The Merkle ledger alone (its own process, a temporary store deleted afterwards)."""
        sizes = ",".join(str(s) for s in self.plan.ledger_sizes)
        out = self.run_dir / "ledger-bench.json"
        self.progress(f"ledger: growing a store to {sizes} leaves, proofs, verify")
        argv = self._python(
            "bench.ledger_bench",
            "--dir",
            str(self.run_dir / "ledger-bench"),
            "--sizes",
            sizes,
            "--samples",
            str(self.plan.ledger_samples),
            "--out",
            str(out),
        )
        done = subprocess.run(argv, env=self._child_env(), timeout=1200, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ledger bench failed ({done.returncode})")
        result = json.loads(out.read_text())
        v = result["verify"]
        self.progress(
            f"ledger: verify of {v['leaves']} events in {v['seconds']:.1f} s (ok={v['ok']})"
        )
        self.results["ledger"] = result

    # -- teardown ----------------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every process this run started: brokers, workers, the stack."""
        for child in list(self.children):
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(timeout=5)
        for broker in list(self.brokers):
            broker.stop()
        if self.stack is not None:
            self.progress("stopping the stack")
            self.stack.stop()
            self.stack = None

    def write(self) -> Path:
        """Targets, the JSON file and the table."""
        self.results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.results["duration_s"] = round(time.monotonic() - self.progress.started, 1)
        self.results["targets"] = evaluate_targets(self.results)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"{self.stamp}.json"
        path.write_text(json.dumps(self.results, indent=2) + "\n")
        return path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; print the table; 0 on a complete run (targets met or not)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run, < 2 min)")
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy the broker and the audit emitter (default: on in full mode)",
    )
    parser.add_argument(
        "--variants",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="what-if runs: OPA without console logs, audit emitter variants (default: full)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other CPU users to go quiet (shared machines)",
    )
    parser.add_argument(
        "--whatif-path",
        default=os.environ.get("BENCH_WHATIF_PATH"),
        metavar="DIR",
        help="extra packages for what-if runs only (pip install --target DIR confluent-kafka); "
        "never on the path of the broker as measured",
    )
    parser.add_argument(
        "--phases",
        default="opa,broker,audit,ledger",
        help="comma-separated phases to run (the broker phase includes redemption and the "
        "viewer pattern); default: all",
    )
    parser.add_argument(
        "--compare-with",
        default="",
        metavar="REV[,REV]",
        help="also measure issuance and the viewer pattern through the broker of these git "
        "revisions (exported with git archive; same stack, same run)",
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--keep-run-dir", action="store_true", help="keep the stack's data and logs"
    )
    args = parser.parse_args(argv)
    plan = (QUICK if args.quick else FULL).with_options(
        profile=args.profile, variants=args.variants
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)
    bench = Bench(
        plan,
        args.results_dir,
        wait_quiet=args.wait_quiet,
        keep=args.keep_run_dir,
        whatif_path=args.whatif_path,
    )
    bench.progress(f"mode {plan.mode}; results to {args.results_dir}")
    ok = False
    failure: BaseException | None = None
    try:
        bench.start_stack()
        bench.describe_machine()
        bench.prepare()
        bench.wait_until_quiet()
        phases = {p.strip() for p in args.phases.split(",") if p.strip()}
        bench.results["phases"] = sorted(phases)
        if "opa" in phases:
            bench.opa_phase()
        if "broker" in phases:
            for workers in plan.workers:
                bench.broker_phase(workers)
            for whatif in BROKER_WHATIFS if plan.variants else ():
                if bench.available(whatif):
                    bench.broker_phase(1, whatif=whatif)
        for rev in [r for r in args.compare_with.split(",") if r.strip()]:
            bench.compare_phase(rev.strip())
        if "audit" in phases:
            bench.audit_phase()
        if "ledger" in phases:
            bench.ledger_phase()
        ok = True
    except KeyboardInterrupt:
        bench.progress("interrupted")
    except Exception as exc:  # noqa: BLE001 - reported with the logs' place, after the clean-up
        failure = exc
    finally:
        bench.stop_all()
    bench.results["complete"] = ok
    path = bench.write()
    print(render_table(bench.results))
    bench.progress(f"results written to {path}")
    if not ok:
        bench.progress(f"incomplete run; the stack's logs are kept under {bench.run_dir}")
        if failure is not None:
            raise failure
        return 130
    if not args.keep_run_dir:
        shutil.rmtree(bench.run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
