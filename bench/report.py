"""The targets of the benchmark issue, checked against a run's results, and the printed table."""

from __future__ import annotations

from typing import Any

__all__ = ["evaluate_targets", "render_table"]


def _level(levels: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((lv for lv in levels if lv["concurrency"] == concurrency), None)


def _best(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(levels, key=lambda lv: lv["rps"], default=None)


def _target(name: str, goal: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "met": met}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue: the goal, what was measured, and whether it was met."""
    out: list[dict[str, Any]] = []
    opa_levels = results.get("opa", {}).get("levels", [])
    opa_best = _best(opa_levels)
    top = max((lv["concurrency"] for lv in opa_levels), default=64)
    opa_top = _level(opa_levels, top)
    opa_one = _level(opa_levels, 1)
    for key, entry in results.get("broker", {}).items():
        if entry.get("whatif"):
            continue  # a what-if sizes a proposal; the targets are about the broker as it is
        links = entry.get("links", [])
        best, at_top = _best(links), _level(links, top)
        one = _level(links, 1)
        if best and opa_best:
            ratio = best["rps"] / opa_best["rps"] if opa_best["rps"] else 0.0
            out.append(
                _target(
                    f"link issuance throughput vs OPA alone ({key})",
                    ">= 50 %",
                    f"{100 * ratio:.1f} % ({best['rps']:.0f} req/s at c={best['concurrency']} vs "
                    f"OPA {opa_best['rps']:.0f} req/s at c={opa_best['concurrency']})",
                    ratio >= 0.5,
                )
            )
        if at_top and opa_top:
            added = at_top["p99_ms"] - opa_top["p99_ms"]
            out.append(
                _target(
                    f"p99 added over OPA's at {top} clients, link issuance ({key})",
                    "<= 5 ms",
                    f"{added:+.1f} ms (broker {at_top['p99_ms']:.1f} ms, OPA "
                    f"{opa_top['p99_ms']:.1f} ms; both queue-bound, see the c=1 row)",
                    added <= 5.0,
                )
            )
        if one and opa_one:
            added = one["p99_ms"] - opa_one["p99_ms"]
            out.append(
                _target(
                    f"p99 added over OPA's at 1 client (service time), link issuance ({key})",
                    "<= 5 ms",
                    f"{added:+.1f} ms (broker {one['p99_ms']:.1f} ms, OPA "
                    f"{opa_one['p99_ms']:.1f} ms; p50 {one['p50_ms'] - opa_one['p50_ms']:+.1f})",
                    added <= 5.0,
                )
            )
    for redemption in results.get("redemption", []):
        ratio = redemption["throughput_ratio"]
        out.append(
            _target(
                f"redemption throughput vs direct Orthanc (c={redemption['concurrency']})",
                ">= 80 %",
                f"{100 * ratio:.1f} % ({redemption['link']['mb_per_s']:.0f} vs "
                f"{redemption['direct']['mb_per_s']:.0f} MB/s)",
                ratio >= 0.8,
            )
        )
    viewer = results.get("viewer")
    if viewer:
        ratio = viewer["frames_per_s_ratio"]
        out.append(
            _target(
                f"viewer frames/s through a link vs direct ({viewer['connections']} connections)",
                ">= 80 %",
                f"{100 * ratio:.1f} % ({viewer['link']['frames_per_s']:.0f} vs "
                f"{viewer['direct']['frames_per_s']:.0f} frames/s)",
                ratio >= 0.8,
            )
        )
        out.append(
            _target(
                "viewer p50 added per frame",
                "<= 2 ms",
                f"{viewer['added_p50_ms']:+.2f} ms (direct "
                f"{viewer['direct']['frame']['p50_ms']:.2f}, link "
                f"{viewer['link']['frame']['p50_ms']:.2f} ms)",
                viewer["added_p50_ms"] <= 2.0,
            )
        )
        link_frame = viewer["link"]["frame"]
        out.append(
            _target(
                "viewer tail through a link: p99.9 <= 10 x p50",
                "<= 10x",
                f"{link_frame['p999_ms'] / link_frame['p50_ms']:.1f}x "
                f"(p99.9 {link_frame['p999_ms']:.1f} ms)"
                if link_frame["p50_ms"]
                else "no frames",
                link_frame["p999_ms"] <= 10 * link_frame["p50_ms"]
                if link_frame["p50_ms"]
                else None,
            )
        )
    for key, entry in results.get("broker", {}).items():
        if entry.get("whatif"):
            continue
        for lv in entry.get("links", []):
            if lv["concurrency"] in (16, 64):
                opa = _level(opa_levels, lv["concurrency"])
                if opa and opa["rps"]:
                    ratio = lv["rps"] / opa["rps"]
                    out.append(
                        _target(
                            f"link issuance at c={lv['concurrency']} vs OPA alone, zero errors "
                            f"({key})",
                            ">= 50 %, 0 errors",
                            f"{100 * ratio:.1f} %, {lv['errors']} errors",
                            ratio >= 0.5 and lv["errors"] == 0,
                        )
                    )
        one = _level(entry.get("links", []), 1)
        if one and opa_one:
            added = one["p50_ms"] - opa_one["p50_ms"]
            out.append(
                _target(
                    f"p50 added over OPA's at 1 client, link issuance ({key})",
                    "<= 3 ms",
                    f"{added:+.1f} ms (broker {one['p50_ms']:.1f} ms, OPA "
                    f"{opa_one['p50_ms']:.1f} ms)",
                    added <= 3.0,
                )
            )
    audit = results.get("audit", {})
    saturate = audit.get("saturate", [])
    if saturate:
        best_emit = max(saturate, key=lambda r: r["events_per_s"])
        out.append(
            _target(
                "audit events/s into Kafka from one process",
                ">= 20,000/s",
                f"{best_emit['events_per_s']:,.0f}/s (c={best_emit['concurrency']})",
                best_emit["events_per_s"] >= 20_000,
            )
        )
    paced = audit.get("ledger_consumer", {}).get("latency_by_phase", {}).get("paced")
    if paced:
        rate = audit.get("paced", {}).get("rate_asked", 0)
        out.append(
            _target(
                f"request → ledger append p99 (at {rate:.0f} events/s)",
                "<= 1 s",
                f"{paced['p99_ms']:.0f} ms (p50 {paced['p50_ms']:.0f} ms)",
                paced["p99_ms"] <= 1000,
            )
        )
    verify = results.get("ledger", {}).get("verify")
    if verify:
        full = verify["leaves"] >= 1_000_000
        out.append(
            _target(
                "verify of 10^6 events",
                "< 60 s",
                f"{verify['seconds']:.1f} s for {verify['leaves']:,} events"
                + ("" if full else " (quick run: fewer than 10^6)"),
                verify["seconds"] < 60 if full else None,
            )
        )
    return out


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [_row(header, widths), _row(["-" * w for w in widths], widths)] + [
        _row(r, widths) for r in rows
    ]


def _cpu(level: dict[str, Any], *names: str) -> str:
    cpu = level.get("cpu_percent", {})
    return "/".join(f"{cpu.get(n, 0):.0f}" for n in names)


def render_table(results: dict[str, Any]) -> str:
    """The human-readable summary of a run."""
    m = results.get("machine", {})
    lines = [
        "",
        f"telerad-broker bench ({results['mode']}), {results.get('duration_s', 0):.0f} s",
        f"{m.get('cpu_model')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, "
        f"Python {m.get('python')}, OPA {m.get('opa')}, Kafka {m.get('kafka')}, "
        f"Keycloak {m.get('keycloak')}, Orthanc {m.get('orthanc')}",
        "",
        "HTTP, closed loop (latency in ms; cpu = % of one core: server/loadgen/other)",
    ]
    opa_levels = results.get("opa", {}).get("levels", [])
    header = ["what", "c", "req/s", "p50", "p99", "p99.9", "err", "vs OPA", "+p99", "cpu"]
    rows = []
    for lv in opa_levels:
        rows.append(
            [
                "OPA alone",
                str(lv["concurrency"]),
                f"{lv['rps']:.0f}",
                f"{lv['p50_ms']:.1f}",
                f"{lv['p99_ms']:.1f}",
                f"{lv['p999_ms']:.1f}",
                str(lv["errors"]),
                "",
                "",
                _cpu(lv, "opa", "loadgen", "other"),
            ]
        )
    for variant in results.get("opa", {}).get("variants", []):
        for lv in variant["levels"]:
            rows.append(
                [
                    f"OPA what-if: {variant['variant']}",
                    str(lv["concurrency"]),
                    f"{lv['rps']:.0f}",
                    f"{lv['p50_ms']:.1f}",
                    f"{lv['p99_ms']:.1f}",
                    f"{lv['p999_ms']:.1f}",
                    str(lv["errors"]),
                    "",
                    "",
                    _cpu(lv, "opa_variant", "loadgen", "other"),
                ]
            )
    for key, entry in results.get("broker", {}).items():
        for name in ("decisions", "links"):
            for lv in entry.get(name, []):
                opa = _level(opa_levels, lv["concurrency"])
                ratio = f"{100 * lv['rps'] / opa['rps']:.0f}%" if opa and opa["rps"] else ""
                added = f"{lv['p99_ms'] - opa['p99_ms']:+.1f}" if opa else ""
                rows.append(
                    [
                        f"broker {key} /api/{name}",
                        str(lv["concurrency"]),
                        f"{lv['rps']:.0f}",
                        f"{lv['p50_ms']:.1f}",
                        f"{lv['p99_ms']:.1f}",
                        f"{lv['p999_ms']:.1f}",
                        str(lv["errors"]),
                        ratio,
                        added,
                        _cpu(lv, "broker", "loadgen", "other"),
                    ]
                )
    lines += _table(header, rows)
    costs = []
    top = max((lv["concurrency"] for lv in opa_levels), default=0)
    opa_top = _level(opa_levels, top)
    if opa_top:
        costs.append(f"OPA {opa_top['cpu_ms_per_request'].get('opa', 0):.2f}")
    for key, entry in results.get("broker", {}).items():
        at_top = _level(entry.get("links", []), top)
        if at_top:
            cost = at_top["cpu_ms_per_request"]
            costs.append(
                f"{key} links: broker {cost.get('broker', 0):.2f} + OPA "
                f"{cost.get('opa', 0):.2f} + Kafka {cost.get('kafka', 0):.2f}"
            )
    if costs:
        lines.append(f"CPU ms per request at c={top}: " + "; ".join(costs))
    redemption = results.get("redemption", [])
    if redemption:
        study = results.get("study", {})
        lines += [
            "",
            f"Redemption of one {study.get('bytes', 0) / 1e6:.1f} MB study "
            f"({study.get('instances')} instances), WADO-RS multipart",
        ]
        header = ["c", "direct MB/s", "link MB/s", "ratio", "TTFB direct p50", "TTFB link p50"]
        rows = [
            [
                str(r["concurrency"]),
                f"{r['direct']['mb_per_s']:.0f}",
                f"{r['link']['mb_per_s']:.0f}",
                f"{100 * r['throughput_ratio']:.0f}%",
                f"{r['direct']['ttfb']['p50_ms']:.1f} ms",
                f"{r['link']['ttfb']['p50_ms']:.1f} ms",
            ]
            for r in redemption
        ]
        lines += _table(header, rows)
    viewer = results.get("viewer")
    if viewer:
        vs = results.get("viewer_study", {})
        d, link = viewer["direct"], viewer["link"]
        lines += [
            "",
            f"Viewer pattern: metadata, then {d['frames_per_open']} frames "
            f"({vs.get('bytes', 0) / 1e6:.1f} MB) over {viewer['connections']} connections, "
            f"{d['opens']} opens per side (ms)",
        ]
        header = ["side", "frames/s", "p50", "p99", "p99.9", "last frame p50", "err", "cpu/frame"]

        def cpu_per_frame(side: dict[str, Any]) -> str:
            cost = side.get("cpu_ms_per_frame", {})
            return ", ".join(
                f"{name} {cost[name]:.2f}" for name in ("broker", "opa", "orthanc") if name in cost
            )

        rows = [
            [
                name,
                f"{side['frames_per_s']:.0f}",
                f"{side['frame']['p50_ms']:.2f}",
                f"{side['frame']['p99_ms']:.2f}",
                f"{side['frame']['p999_ms']:.2f}",
                f"{side['time_to_last_frame_ms']['p50_ms']:.0f}",
                str(side["errors"]),
                cpu_per_frame(side),
            ]
            for name, side in (("direct (Orthanc)", d), ("through a link", link))
        ]
        lines += _table(header, rows)
        lines.append(
            f"link/direct: {100 * viewer['frames_per_s_ratio']:.0f} % frames/s, "
            f"{viewer['added_p50_ms']:+.2f} ms p50, {viewer['added_p99_ms']:+.2f} ms p99 per "
            f"frame; audit events per study open: {viewer.get('audit_events_per_open')} "
            f"({viewer.get('audit_events_open')}), issuance {viewer.get('audit_events_issue')}"
        )
    compare = results.get("compare", {})
    if compare:
        lines += ["", "Before/after: the same run, the broker of other revisions (1 worker)"]
        header = [
            "broker",
            "links c=1 p50",
            "c=1 req/s",
            "c=16 req/s",
            "c=64 req/s / err",
            "viewer frames/s",
            "vs direct",
            "frame p50",
            "CPU/frame broker+orthanc",
            "events/open",
        ]

        def row(name: str, links: list[dict[str, Any]], view: dict[str, Any] | None) -> list[str]:
            one, mid, top = (_level(links, c) for c in (1, 16, 64))
            link = (view or {}).get("link", {})
            return [
                name,
                f"{one['p50_ms']:.1f}" if one else "",
                f"{one['rps']:.0f}" if one else "",
                f"{mid['rps']:.0f}" if mid else "",
                f"{top['rps']:.0f} / {top['errors']}" if top else "",
                f"{link.get('frames_per_s', 0):.0f}" if view else "",
                f"{100 * (view or {}).get('frames_per_s_ratio', 0):.0f}%" if view else "",
                f"{link.get('frame', {}).get('p50_ms', 0):.2f}" if view else "",
                "{:.2f}+{:.2f}".format(
                    link.get("cpu_ms_per_frame", {}).get("broker", 0),
                    link.get("cpu_ms_per_frame", {}).get("orthanc", 0),
                )
                if view
                else "",
                str((view or {}).get("audit_events_per_open", "")),
            ]

        rows = [row(key, e.get("links", []), e.get("viewer")) for key, e in compare.items()]
        current = results.get("broker", {}).get("1w", {})
        if current:
            rows.append(row("1w (this checkout)", current.get("links", []), viewer))
        lines += _table(header, rows)
    audit = results.get("audit", {})
    if audit:
        lines += ["", "Audit: KafkaAuditSink.emit from one process (acks=all, idempotent)"]
        header = ["run", "c", "events/s", "ack p50", "ack p99", "emitter cpu%", "errors"]
        rows = []
        runs = [
            *audit.get("saturate", []),
            audit.get("paced", {}),
            *audit.get("paced_variants", []),
            *audit.get("variants", []),
        ]
        for r in runs:
            if not r:
                continue
            label = r["mode"] if r["variant"] == "baseline" else f"what-if: {r['variant']}"
            if r["mode"] == "paced":
                label = f"paced at {r['rate_asked']:.0f}/s"
                if r["variant"] != "baseline":
                    label += f", what-if: {r['variant']}"
            rows.append(
                [
                    label,
                    str(r["concurrency"]) if r["mode"] == "saturate" else "-",
                    f"{r['events_per_s']:.0f}",
                    f"{r['ack_latency']['p50_ms']:.1f}",
                    f"{r['ack_latency']['p99_ms']:.1f}",
                    f"{r.get('cpu_percent_of_one_core', 0):.0f}",
                    str(r["errors"]),
                ]
            )
        lines += _table(header, rows)
        consumer = audit.get("ledger_consumer", {})
        paced = consumer.get("latency_by_phase", {}).get("paced")
        if paced:
            lines.append(
                f"emit → ledger append (paced): p50 {paced['p50_ms']:.0f} ms, p99 "
                f"{paced['p99_ms']:.0f} ms, max {paced['max_ms']:.0f} ms; consumer batches "
                f"mean {consumer.get('mean_batch')} events"
            )
        rates = [
            v["append_rate_per_s"]
            for phase, v in consumer.get("latency_by_phase", {}).items()
            if v.get("append_rate_per_s") and phase.startswith(("saturate", "variant"))
        ]
        if rates:
            lines.append(
                f"ledger consumer: up to {max(rates):,.0f} events/s appended while behind "
                "(first to last event of a saturating run)"
            )
    ledger = results.get("ledger")
    if ledger:
        appends = ", ".join(
            f"{r['appends_per_s']:,.0f}/s (batch {r['batch']})" for r in ledger["append_rates"]
        )
        lines += ["", f"Ledger (SQLite, synchronous=FULL): appends {appends}"]
        header = ["leaves", "incl. prove p50", "incl. bytes", "cons. prove p50", "cons. bytes"]
        rows = [
            [
                f"{s['size']:,}",
                f"{1000 * s['inclusion']['prove']['p50_ms']:.0f} µs",
                str(s["inclusion"]["bytes_max"]),
                f"{1000 * s['consistency']['prove']['p50_ms']:.0f} µs",
                str(s["consistency"]["bytes_max"]),
            ]
            for s in ledger["sizes"]
        ]
        lines += _table(header, rows)
        v = ledger["verify"]
        lines.append(
            f"verify: {v['leaves']:,} events, {v['heads']} signed heads in {v['seconds']:.1f} s "
            f"(ok={v['ok']})"
        )
    targets = results.get("targets", [])
    if targets:
        lines += ["", "Targets"]
        rows = [
            [
                t["target"],
                t["goal"],
                t["measured"],
                {True: "met", False: "MISSED", None: "n/a"}[t["met"]],
            ]
            for t in targets
        ]
        lines += _table(["target", "goal", "measured", ""], rows)
    cost = results.get("loadgen")
    if cost:
        lines.append(
            f"load generator: {cost['builtin_cpu_ms_per_request']:.3f} ms CPU per request "
            f"(httpx.AsyncClient: {cost['httpx_cpu_ms_per_request']:.3f})"
        )
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
