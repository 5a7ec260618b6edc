"""The benchmark's headline table, its Markdown report and its PNG plots, from the run's figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import plots
from bench.churn import MODELS

NA = "n/a"


def _pct(x: float | None) -> str:
    return NA if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return NA if x is None else f"{x:.2f} ms"


def _s(x: float | None) -> str:
    return NA if x is None else f"{x:.2f} s"


def _get(d: dict[str, Any], *keys: Any) -> Any:
    for k in keys:
        if not isinstance(d, dict | list):
            return None
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return None
    return d


def _verdict(ok: bool | None) -> str:
    return NA if ok is None else ("met" if ok else "missed")


# Adds one headline row: figure, target, rackscale's value, the baseline's, and whether it is met.
Row = Callable[[str, str, str, str, bool | None], None]


def headline(fig: dict[str, Any]) -> list[dict[str, str]]:
    """One row per figure with a target: rackscale, the baseline, and whether the target is met."""
    parts = fig["parts"]
    rows: list[dict[str, str]] = []

    def row(figure: str, target: str, ours: str, theirs: str, ok: bool | None) -> None:
        rows.append(
            {
                "figure": figure,
                "target": target,
                "rackscale": ours,
                "kube-scheduler": theirs,
                "verdict": _verdict(ok),
            }
        )

    apply = parts.get("apply") or {}
    _placement_rows(parts, row)
    _apply_rows(apply, row)
    _failover_rows(parts, row)
    _churn_rows(parts, apply, row)
    _disagg_rows(parts, row)
    _optimal_rows(parts, row)
    _operator_rows(apply, row)
    return rows


def _placement_rows(parts: dict[str, Any], row: Row) -> None:
    runs = _get(parts, "placement", "runs") or []
    biggest = max(runs, key=lambda r: r["racks"]) if runs else None
    if biggest:
        n = biggest["racks"]
        dps, p99 = biggest["decisions_per_second"], biggest["all"]["p99_ms"]
        row(f"1. placement decisions/s, {n} racks", ">= 2,000", f"{dps:,}", NA, dps >= 2000)
        row(f"1. placement p99, {n} racks", "<= 5 ms", _ms(p99), NA, p99 <= 5)


def _apply_rows(apply: dict[str, Any], row: Row) -> None:
    if "rackscale" in apply:
        ours, theirs = apply["rackscale"], apply["kube-scheduler"]
        b, t = ours["bound_s"], theirs["bound_s"]
        row("2. apply to all 16 bound, p50", "<= 1 s", _s(b["p50"]), _s(t["p50"]), b["p50"] <= 1)
        row("2. apply to all 16 bound, p99", NA, _s(b["p99"]), _s(t["p99"]), None)
        r, tr = ours["running_s"], theirs["running_s"]
        row("2. apply to all 16 Running, p50", "<= 3 s", _s(r["p50"]), _s(tr["p50"]), r["p50"] <= 3)
        row("2. apply to all 16 Running, p99", NA, _s(r["p99"]), _s(tr["p99"]), None)
    else:
        row("2. apply to bound / Running", "<= 1 s / <= 3 s", "not run", "not run", None)


def _disagg_rows(parts: dict[str, Any], row: Row) -> None:
    """Serving groups under churn: colocate Rack against the same roles as independent
    deployments (in the baseline column)."""
    systems = _get(parts, "disagg", "systems") or {}
    if not systems:
        return
    ours, theirs = systems["colocate: Rack"], systems["independent deployments"]

    def share(s: dict[str, Any]) -> str:
        value = s["same_nvlink_domain_share"]
        return NA if value is None else _pct(value)

    ok = ours["same_nvlink_domain_share"] == 1
    row("13. serving groups whose prefill and decode share an NVLink domain, churn to 90% "
        "(baseline: the roles as independent deployments)", "100%", share(ours), share(theirs),
        ok)  # fmt: skip
    row("13. serving groups refused", NA, str(ours["refused"]), str(theirs["refused"]), None)
    row("13. whole racks free after churn", NA, str(ours["after_churn"]["whole_racks_free"]),
        str(theirs["after_churn"]["whole_racks_free"]), None)  # fmt: skip


def _failover_rows(parts: dict[str, Any], row: Row) -> None:
    failover = _get(parts, "failover", "pods_created_s")
    if failover:
        row("failover: leader killed -> new deployment's pods created by the standby, p50 / max",
            "<= 20 s", f"{_s(failover['p50'])} / {_s(failover['max'])}", NA,
            failover["max"] <= 20)  # fmt: skip
    else:
        row("failover: leader killed -> new deployment's pods created by the standby",
            "<= 20 s", "not run", NA, None)  # fmt: skip


def _churn_rows(parts: dict[str, Any], apply: dict[str, Any], row: Row) -> None:
    systems = _get(parts, "churn", "systems") or {}
    if systems:
        o = systems["rackscale"]
        models = [systems[name] for name in MODELS if name in systems]

        def both(show: Any) -> str:
            return " / ".join(show(m) for m in models)

        def churn_row(figure: str, target: str, show: Any, ok: bool | None) -> None:
            row(figure, target, show(o), both(show), ok)

        in_domain = o["tp_in_domain_share"] == 1
        churn_row("3. TP groups in one NVLink domain", "100%",
                  lambda s: _pct(s["tp_in_domain_share"]), in_domain)  # fmt: skip
        churn_row("3. replicas <= 72 GPUs inside one rack", NA,
                  lambda s: _pct(s["in_one_rack_share"]), None)  # fmt: skip
        churn_row("3. avoidable splits", "0", lambda s: str(s["avoidable_splits"]),
                  o["avoidable_splits"] == 0)  # fmt: skip
        churn_row("3. replicas refused (of offered)", NA,
                  lambda s: f"{s['refused']} of {s['offered']}", None)  # fmt: skip
        check = apply.get("model_check_stream")
        if check:
            real, eng = check["kube-scheduler (real)"], check["rackscale (engine)"]
            row(f"3. on kwok, {check['arrivals']} arrivals, 20 racks: TP groups in domain "
                "(real kube-scheduler)", "100%", _pct(eng["tp_in_domain_share"]),
                _pct(real["tp_in_domain_share"]), eng["tp_in_domain_share"] == 1)  # fmt: skip
            row("3. on kwok: avoidable splits (real kube-scheduler)", "0",
                str(eng["avoidable_splits"]), str(real["avoidable_splits"]),
                eng["avoidable_splits"] == 0)  # fmt: skip
        churn_row("4. whole racks free after churn", NA,
                  lambda s: str(s["after_churn"]["whole_racks_free"]), None)  # fmt: skip
        churn_row("4. whole racks free, mean over 2nd half of churn", NA,
                  lambda s: f"{s['second_half_mean']['whole_racks_free']:.1f}", None)  # fmt: skip
        churn_row("4. largest replica one rack takes, mean, 2nd half", NA,
                  lambda s: f"{s['second_half_mean']['largest_in_one_rack']:.0f} GPUs",
                  None)  # fmt: skip


def _optimal_rows(parts: dict[str, Any], row: Row) -> None:
    for fam in (_get(parts, "optimal", "families") or {}).values():
        lo, hi = fam["demand_of_free_gpus"]
        what = f"demand {lo:.0%}-{hi:.0%} of free"
        ratio = fam["one_pass"]["p95_instance_ratio"]
        online = fam["one_at_a_time"]["p95_instance_ratio"]
        row(f"4. GPUs placed / optimum, p95 instance, {what}", ">= 98%", _pct(ratio), NA,
            ratio >= 0.98)  # fmt: skip
        row(f"4. same, replicas arriving one at a time, {what}", NA, _pct(online), NA, None)


def _operator_rows(apply: dict[str, Any], row: Row) -> None:
    rec = apply.get("operator_reconcile_20_racks")
    if rec and rec["passes"]:
        row("5. real operator reconcile pass, 20-rack kwok cluster, mean (p99 at most)", NA,
            f"{rec['mean_ms']:.0f} ms (<= {rec['p99_at_most_ms']:.0f} ms)", NA, None)  # fmt: skip
    mem = apply.get("operator_memory_20_racks")
    if mem:
        row(
            "5. real operator RSS on the 20-rack cluster", NA, f"{mem['rss_mib']:.0f} MiB", NA, None
        )


OLD_AND_NEW_COLUMNS = ("figure", "target", "old", "new", "new meets target")
# The targets, each at the size it names: the rebuild's (issue 12) and one plan per pass's
# (issue 25: decisions/s, `plan` with YAML, the idle and placing passes).
TARGET_RACKS = 1000
IDLE_PASS_P99_MS, PLACING_PASS_P99_MS, RSS_MIB = 0.5, 17.0, 150.0
APPLY_P50_S, IDLE_CPU_PERCENT = 0.3, 0.5
DECISIONS_PER_S, PLAN_YAML_WALL_S = 10_000, 3.0


def _side(run: dict[str, Any], side: str, show: Any) -> str:
    figures = run.get(side) or {}
    if "error" in figures:
        return "failed"
    try:
        return str(show(figures))
    except (KeyError, TypeError):
        return NA


def _figure(run: dict[str, Any], *keys: str) -> float | None:
    value = _get(run, "new", *keys)
    return float(value) if isinstance(value, int | float) else None


def _at_most(value: float | None, bound: float, applies: bool = True) -> bool | None:
    return None if value is None or not applies else value <= bound


def old_and_new(fig: dict[str, Any]) -> list[dict[str, str]]:
    """The operator before and after the rebuild, side by side; the verdict is the new one's."""
    parts = fig["parts"]
    rows: list[dict[str, str]] = []

    def row(figure: str, target: str, run: dict[str, Any], show: Any, ok: bool | None) -> None:
        old, new = _side(run, "old", show), _side(run, "new", show)
        rows.append(
            dict(zip(OLD_AND_NEW_COLUMNS, (figure, target, old, new, _verdict(ok)), strict=True))
        )

    _placement_old_and_new(parts, row)
    _plan_speed_old_and_new(parts, row)
    for run in _get(parts, "overhead", "runs") or []:
        n = f"{run['racks']:,}"
        at = run["racks"] == TARGET_RACKS
        idle, placing = (
            _figure(run, "steady_pass_ms", "p99"),
            _figure(run, "placing_pass_ms", "p99"),
        )
        row(
            f"5. pass with nothing to do, {n} racks (in-memory view), p99",
            f"<= {IDLE_PASS_P99_MS} ms" if at else NA,
            run,
            lambda f: _ms(f["steady_pass_ms"]["p99"]),
            _at_most(idle, IDLE_PASS_P99_MS, at),
        )
        row(
            f"5. pass placing one replica, {n} racks, p99",
            f"<= {PLACING_PASS_P99_MS:.0f} ms" if at else NA,
            run,
            lambda f: _ms(f["placing_pass_ms"]["p99"]),
            _at_most(placing, PLACING_PASS_P99_MS, at),
        )
        row(
            f"5. operator state RSS, {n} racks",
            f"<= {RSS_MIB:.0f} MiB" if at else NA,
            run,
            lambda f: f"{f['rss_mib']:.0f} MiB",
            _at_most(_figure(run, "rss_mib"), RSS_MIB, at),
        )
    live = parts.get("operator") or {}
    if "old" in live or "new" in live:
        where = f"{_get(live, 'parameters', 'deployments')} deployments"
        row(
            f"6. apply -> all pods created, live 20-rack kwok cluster, {where}, p50",
            f"<= {APPLY_P50_S} s",
            live,
            lambda f: _s(f["apply_to_pods_created_s"]["p50"]),
            _at_most(_figure(live, "apply_to_pods_created_s", "p50"), APPLY_P50_S),
        )
        row(
            "6. apply -> all pods created, same cluster, p90",
            NA,
            live,
            lambda f: _s(f["apply_to_pods_created_s"]["p90"]),
            None,
        )
        row(
            "6. operator CPU while nothing changes, same cluster",
            f"<= {IDLE_CPU_PERCENT}% of a core",
            live,
            lambda f: f"{f['idle_cpu']['percent_of_core']:.2f}% of a core",
            _at_most(_figure(live, "idle_cpu", "percent_of_core"), IDLE_CPU_PERCENT),
        )
        row("6. operator RSS, same cluster", NA, live, lambda f: f"{f['rss_mib']:.0f} MiB", None)
    else:
        reason = live.get("skipped") or live.get("error") or "not run"
        rows.append(
            dict(
                zip(
                    OLD_AND_NEW_COLUMNS,
                    ("6. the live operator", NA, reason, reason, NA),
                    strict=True,
                )
            )
        )
    rows += _fleet_rows(parts.get("fleet") or {})
    return rows


# Adds one old-and-new row: figure, target, the run holding "old" and "new", how to show a
# side's figures, and whether the new side meets the target.
OldNewRow = Callable[[str, str, dict[str, Any], Any, bool | None], None]


def _placement_old_and_new(parts: dict[str, Any], row: OldNewRow) -> None:
    """Part 1 at each size, the old commit's driver beside the new one's; same seed and mix."""
    placement = parts.get("placement") or {}
    old = {r["racks"]: r for r in _get(placement, "old", "runs") or []}
    for new in placement.get("runs") or []:
        n = new["racks"]
        run = {"old": old.get(n) or {"error": "not run"}, "new": new}
        at = n == TARGET_RACKS
        dps = new.get("decisions_per_second")
        row(
            f"1. placement decisions/s, {n:,} racks",
            f">= {DECISIONS_PER_S:,}" if at else NA,
            run,
            lambda f: f"{f['decisions_per_second']:,}",
            None if dps is None or not at else dps >= DECISIONS_PER_S,
        )
        row(f"1. placement p99, {n:,} racks", NA, run, lambda f: _ms(f["all"]["p99_ms"]), None)


def _plan_speed_old_and_new(parts: dict[str, Any], row: OldNewRow) -> None:
    """`rackscale plan` on the same files: the old commit's command beside the new one's."""
    speed = parts.get("plan_speed") or {}
    if "yaml" not in speed:
        return
    n = speed["racks"]
    at = n == TARGET_RACKS
    run = {"old": speed.get("old") or {"error": "not run"}, "new": speed}
    for source in ("yaml", "json"):
        wall = _get(speed, source, "wall_s")
        yaml_target = source == "yaml" and at
        row(
            f"plan, {n:,} racks, {speed['replicas']:,} replicas, {source.upper()} nodes: "
            "wall / CPU",
            f"<= {PLAN_YAML_WALL_S:.0f} s wall" if yaml_target else NA,
            run,
            lambda f, s=source: _plan_cell(f[s]),
            _at_most(wall, PLAN_YAML_WALL_S, yaml_target),
        )


def _plan_cell(f: dict[str, Any]) -> str:
    if f["exit_code"] != 0:
        return f"exited {f['exit_code']}"
    return f"{_s(f['wall_s'])} / {_s(f['cpu_s'])}"


def _ready_after(f: dict[str, Any], deadline: float) -> str:
    if f["ready_s"] is not None:
        return _s(f["ready_s"])
    return f"not by {deadline:.0f} s ({f['at_the_end']['ready']} Ready)"


def _fleet_rows(fleet: dict[str, Any]) -> list[dict[str, str]]:
    """Part 7's figures, old and new; the verdicts are the new side's."""
    if "old" not in fleet and "new" not in fleet:
        reason = fleet.get("skipped") or fleet.get("error") or "not run"
        return [
            dict(zip(OLD_AND_NEW_COLUMNS, ("7. the fleet", NA, reason, reason, NA), strict=True))
        ]
    rows: list[dict[str, str]] = []

    def row(figure: str, target: str, show: Any, ok: bool | None) -> None:
        old, new = _side(fleet, "old", show), _side(fleet, "new", show)
        rows.append(
            dict(zip(OLD_AND_NEW_COLUMNS, (figure, target, old, new, _verdict(ok)), strict=True))
        )

    p = fleet["parameters"]
    new = fleet.get("new") or {}
    end = new.get("at_the_end") or {}
    where = f"{p['deployments']:,} deployments applied at once, {fleet['racks']} racks"
    row(f"7. {where}: all with a status for their generation", NA,
        lambda f: _s(f["observed_s"]) if f["observed_s"] is not None else "not reached",
        None)  # fmt: skip
    row(f"7. {where}: all pods created", NA,
        lambda f: _s(f["pods_created_s"]) if f["pods_created_s"] is not None else "not reached",
        None)  # fmt: skip
    row(f"7. {where}: all Ready", f"<= {p['deadline_s']:.0f} s",
        lambda f: _ready_after(f, p["deadline_s"]), new.get("finished"))  # fmt: skip
    row("7. deployments left without a status / saying they failed", "0 / 0",
        lambda f: f"{f['at_the_end']['no_status']} / {f['at_the_end']['failed']}",
        None if not end else end["no_status"] == 0 and end["failed"] == 0)  # fmt: skip
    row("7. Services created (2 per deployment)", "all",
        lambda f: f"{f['at_the_end']['services']:,} of {f['services_wanted']:,}",
        None if not end else end["services"] == new["services_wanted"])  # fmt: skip
    row("7. writes the API server refused (all clients)", NA,
        lambda f: f"{f['refused_writes']:,}", None)  # fmt: skip
    row("7. operator CPU from apply to the end / peak RSS", NA,
        lambda f: f"{f['cpu_s']:.0f} s / {f['peak_rss_mib']:.0f} MiB", None)  # fmt: skip
    return rows


HEADLINE_COLUMNS = ("figure", "target", "rackscale", "kube-scheduler", "verdict")


def table(rows: list[dict[str, str]], cols: tuple[str, ...] = HEADLINE_COLUMNS) -> str:
    """Rows as a Markdown table (also readable in a terminal)."""
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in cols}
    lines = [
        "| " + " | ".join(c.ljust(widths[c]) for c in cols) + " |",
        "| " + " | ".join("-" * widths[c] for c in cols) + " |",
    ]
    lines += ["| " + " | ".join(r[c].ljust(widths[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _machine(fig: dict[str, Any]) -> list[str]:
    m = fig["machine"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    return [
        f"- {m['cpus']} CPUs, {m['memory_gib']} GiB memory, {m['platform']}",
        f"- load average (1, 5, 15 min) at the start {m['load_average']}, at the end "
        f"{fig['load_average_end']}: the machine is shared, so wall-clock figures carry that load",
        f"- Python {m['python']}, {pk}; Kubernetes {m['kubernetes']} (the local control plane); "
        f"rackscale commit {m['rackscale_commit']}",
        f"- seed {fig['seed']}, quick mode {fig['quick']}, whole run {fig['seconds']} s",
    ]


def markdown(fig: dict[str, Any], out: Path, stem: str) -> str:
    """The report: machine, headline, then each part with its parameters, plot and meaning."""
    images = plots.draw(fig, out, stem)
    parts = fig["parts"]
    p = fig["parameters"]
    md = [
        f"# rackscale against kube-scheduler alone: {fig['date']}",
        "",
        "Every figure below was measured in this run; the kube-scheduler figures are the same "
        "pods with plain `nvidia.com/gpu` requests, placed by kube-scheduler (part 2, the real "
        "one) or by a model of its default placement (parts 3 and 4).",
        "",
        "## Machine and versions",
        "",
        *_machine(fig),
        "",
        "## Headline",
        "",
        "Rows 3 and 4 from the churn simulation show two kube-scheduler models side by side: "
        "ties to the node found first / ties at random (see part 3); the rows marked kwok are "
        "the real kube-scheduler.",
        "",
        table(fig["headline"]),
        "",
        "### The operator before and after the rebuild",
        "",
        "Old and new code in this same run (parts 1, 5, 6 and 7 say how each figure was measured; "
        "`plan` is the whole command, a fresh process on the same files); "
        "the verdict is the new code's.",
        "",
        *_code(parts.get("overhead") or parts.get("operator") or {}),
        table(fig["old_and_new"], OLD_AND_NEW_COLUMNS),
        "",
    ]
    md += _section_placement(parts.get("placement") or {}, images)
    md += _section_apply(parts.get("apply") or {}, p, images)
    md += _section_failover(parts.get("failover") or {})
    md += _section_churn(parts.get("churn") or {}, images)
    md += _section_optimal(parts.get("optimal") or {}, images)
    md += _section_overhead(parts.get("overhead") or {})
    md += _section_live(parts.get("operator") or {})
    md += _section_fleet(parts.get("fleet") or {})
    md += [
        "## Parameters",
        "",
        "```text",
        *[f"{k}: {v}" for k, v in p.items()],
        "```",
        "",
    ]
    return "\n".join(md)


def _failed(part: dict[str, Any]) -> list[str]:
    if "error" in part:
        return [f"**This part failed**: `{part['error']}`", ""]
    return []


def _img(images: dict[str, str], key: str) -> list[str]:
    return [f"![{key}]({images[key]})", ""] if key in images else []


def _section_placement(part: dict[str, Any], images: dict[str, str]) -> list[str]:
    md = ["## 1. Placement speed (pure engine)", "", *_failed(part)]
    md += [
        "The engine alone, each size in a process of its own: a mixed stream of deployments "
        "(1-4 replicas of 4 to 144 GPUs, some exclusive, some spread) is placed replica by "
        "replica on an empty pool until it is 90% full; each `place_replica` call is timed (wall "
        "clock, and CPU time of the thread). The new code and the old commit's own driver run "
        "the same seed and sizes. There is no kube-scheduler row: it has no pure placement engine "
        "to time apart from its API round trips, and a figure invented for it would mean nothing.",
        "",
        *_code(part.get("old") or {}),
        "| code | racks | decisions | decisions/s | CPU decisions/s | p50 | p99 | max | filled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    old = {r["racks"]: r for r in _get(part, "old", "runs") or []}
    for r in part.get("runs", []):
        md.append(_placement_row("new", r))
        if r["racks"] in old:
            md.append(_placement_row("old", old[r["racks"]]))
    md += ["", *_img(images, "placement")]
    md += [
        "Decisions/s is decisions over the summed time of the decisions; p50/p99 are per replica "
        "decision; large and multi-rack replicas are the slow tail (see the JSON's `by_size`).",
        "",
    ]
    return md


def _placement_row(side: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {side} | {r['racks']} | failed: `{r['error']}` |"
    a = r["all"]
    return (
        f"| {side} | {r['racks']} | {a['decisions']} | {r['decisions_per_second']:,} | "
        f"{r['cpu_decisions_per_second']:,} | {_ms(a['p50_ms'])} | {_ms(a['p99_ms'])} | "
        f"{_ms(a['max_ms'])} | {r['filled']:.0%} |"
    )


def _section_apply(part: dict[str, Any], p: dict[str, Any], images: dict[str, str]) -> list[str]:
    md = ["## 2. Apply to bound and to Running (kwok cluster)", "", *_failed(part)]
    if "skipped" in part:
        return [*md, f"Not run: {part['skipped']}.", ""]
    if "rackscale" not in part:
        return md
    o, k = part["rackscale"], part["kube-scheduler"]
    md += [
        f"On the local control plane with the `{part['profile']}` profile ({part['racks']} NVL72 "
        f"racks, {part['nodes']} kwok nodes), with the operator running as a subprocess "
        f"(`python -m rackscale run --all-namespaces`): {part['pods']} pods of "
        f"{part['gpus_per_pod']} GPUs each, {o['trials']} trials per side, alternating. "
        "rackscale: one InferenceDeployment (TP 8 x DP 8, expert 64) is created; the clock runs "
        "from the create call until the last of its 16 pods is bound (has a node) and Running. "
        "kube-scheduler: the same 16 pods without pins, created by 16 concurrent requests, timed "
        "the same way. Between trials everything is deleted and the namespace waits empty.",
        "",
        f"Measurement: {part['measurement']}. kwok marks a bound pod Running at once, so Running "
        "minus bound is the fake kubelet's delay, not a container start.",
        "",
        "| | bound p50 | bound p99 | Running p50 | Running p99 | racks spanned "
        "| TP groups in one rack |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, side in (("rackscale", o), ("kube-scheduler", k)):
        loc = side["locality"]
        md.append(
            f"| {name} | {_s(side['bound_s']['p50'])} | {_s(side['bound_s']['p99'])} | "
            f"{_s(side['running_s']['p50'])} | {_s(side['running_s']['p99'])} | "
            f"{loc['racks_spanned_mean']} (max {loc['racks_spanned_max']}) | "
            f"{_pct(loc['tp_in_domain_share'])} |"
        )
    first, rand = k["model_locality"]["first found"], k["model_locality"]["random ties"]
    md += [
        "",
        *_img(images, "apply"),
        "rackscale's time includes the operator's work: its watch sees the new object, it "
        "places the replica, creates 16 pinned pods one request at a time and kube-scheduler "
        "binds them; the baseline skips all of that and so binds sooner, but scatters the pods.",
        "",
        "Model check: `bench/baseline.py` placing the same 16 pods (in a random order, as 16 "
        "concurrent creates reach the queue) on the same empty racks spans "
        f"{first['racks_spanned_mean']} racks on average with "
        f"{_pct(first['tp_in_domain_share'])} of TP groups in one rack when ties go to the node "
        f"found first, {rand['racks_spanned_mean']} racks and "
        f"{_pct(rand['tp_in_domain_share'])} with random ties, against "
        f"{k['locality']['racks_spanned_mean']} and {_pct(k['locality']['tp_in_domain_share'])} "
        "for the real kube-scheduler above.",
        "",
    ]
    check = part.get("model_check_stream")
    if check:
        md += [
            f"Model check on a churn stream: {check['events']} events ({check['arrivals']} "
            f"arrivals) of the part 3 mix, scaled to these {check['racks']} racks, went through "
            "the real kube-scheduler on this cluster (each replica's pods created in shard order, "
            "waited until bound; one that stays Unschedulable is deleted whole; departures "
            "deleted and waited out), through `bench/baseline.py` and through rackscale's engine, "
            f"in {check['seconds']} s:",
            "",
            "| | placed | refused | TP groups in one NVLink domain | replicas <= 72 in one rack "
            "| avoidable splits |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, c in check.items():
            if isinstance(c, dict):
                md.append(
                    f"| {name} | {c['placed']} | {c['refused']} | "
                    f"{_pct(c['tp_in_domain_share'])} | {_pct(c['in_one_rack_share'])} | "
                    f"{c['avoidable_splits']} |"
                )
        md += [
            "",
            "Where the models and the real scheduler differ, the real figures are the ones to "
            "trust; the models are what let part 3 run thousands of events at 64 racks in "
            "seconds, and the real scheduler falls between them.",
            "",
        ]
    rec = part.get("operator_reconcile_20_racks")
    if rec and rec["passes"]:
        md += [
            f"The real operator's own reconcile-pass histogram "
            f"(`rackscale_reconcile_duration_seconds`, read from its metrics endpoint at the "
            f"end): {rec['passes']} passes, mean {rec['mean_ms']} ms, p50 at most "
            f"{rec['p50_at_most_ms']} ms and p99 at most {rec['p99_at_most_ms']} ms (the "
            f"histogram only has bucket bounds: {rec['buckets_s']} s).",
            "",
        ]
    mem = part.get("operator_memory_20_racks")
    if mem:
        md += [
            f"The real operator's RSS after the trials: {mem['rss_mib']} MiB "
            f"(peak {mem['peak_rss_mib']} MiB), on {part['nodes']} nodes.",
            "",
        ]
    return md


def _section_failover(part: dict[str, Any]) -> list[str]:
    md = ["## Failover: the leader killed (kwok cluster)", "", *_failed(part)]
    if "skipped" in part:
        return [*md, f"Not run: {part['skipped']}.", ""]
    if "pods_created_s" not in part:
        return md
    c, t = part["pods_created_s"], part.get("lease_taken_s") or {}
    md += [
        f"Two operators on the `{part['profile']}` cluster share one Lease (10 s, renewed every "
        "2 s, standby attempts every 2 s); each trial SIGKILLs the holder, at once creates an "
        f"InferenceDeployment of {part['pods']} pods, and starts a fresh standby afterwards. "
        f"Measurement: {part['measurement']}.",
        "",
        "| trials | kill -> pods created p50 | max | kill -> Lease taken p50 | max "
        "| pods of a standing deployment moved |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {part['trials']} | {_s(c['p50'])} | {_s(c['max'])} | {_s(t.get('p50'))} | "
        f"{_s(t.get('max'))} | {part['steady_pods_moved']} |",
        "",
        "Most of it is the Lease expiring (a killed leader gives nothing back); a clean stop "
        "hands the Lease over at once.",
        "",
    ]
    return md


def _section_churn(part: dict[str, Any], images: dict[str, str]) -> list[str]:
    md = ["## 3. Locality under churn, and 4. fragmentation after it", "", *_failed(part)]
    if "systems" not in part:
        return md
    mix = ", ".join(f"{m['gpus']} GPUs (weight {m['weight']})" for m in part["mix"])
    md += [
        f"A simulation on {part['racks']} NVL72 racks ({part['gpus']} GPUs): one stream of "
        f"{part['events']} events ({part['arrivals']} arrivals, the rest departures of a random "
        f"running job) keeping the offered demand at most {part['target_load']:.0%} of the GPUs. "
        f"Sizes: {mix}; every replica is TP 8 over pods of 4 GPUs (so each TP group is 2 pods), "
        "72 GPUs as 9 pipeline stages, 144 GPUs as 18 stages with `replicaScope: Any`. "
        "rackscale is the real engine (`place_replica`, departures undo the reservation). "
        "kube-scheduler is `bench/baseline.py`: pods created at once, bound one at a time by "
        "NodeResourcesFit filtering and LeastAllocated scoring over CPU and memory (GPUs are not "
        "scored by default, BalancedAllocation skips pods without CPU or memory requests), the "
        "adaptive percentageOfNodesToScore with its rotating start, and a tie rule: without an "
        "extender the scheduler draws no random tie-breaker, so the node found first wins, but "
        "its filter runs in parallel and finds nodes in a slightly shuffled order. The two model "
        "rows bracket that: ties to the node found first, and ties broken at random; the check "
        "on the kwok cluster in part 2 shows where the real scheduler falls. A replica whose "
        "pods do not all fit is refused whole (kinder than real, where the bound ones would "
        "hold GPUs while the rest wait).",
        "",
        "| | placed | refused | TP groups in one NVLink domain | replicas <= 72 in one rack "
        "| avoidable splits | whole racks free: end / mean of 2nd half "
        "| largest replica one rack takes: end / mean of 2nd half |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in part["systems"].items():
        a, m = s["after_churn"], s["second_half_mean"]
        md.append(
            f"| {name} | {s['placed']} | {s['refused']} {s['refused_by_size']} | "
            f"{_pct(s['tp_in_domain_share'])} | {_pct(s['in_one_rack_share'])} | "
            f"{s['avoidable_splits']} | {a['whole_racks_free']} / {m['whole_racks_free']:.1f} | "
            f"{a['largest_in_one_rack']} / {m['largest_in_one_rack']:.0f} GPUs |"
        )
    md += [
        "",
        *_img(images, "churn"),
        "- TP groups in one NVLink domain: of the TP groups of every placed replica, the share "
        "whose two pods are in one rack.",
        "- Replicas inside one rack: of placed replicas of at most 72 GPUs, the share on one rack.",
        "- Avoidable splits: placed replicas of at most 72 GPUs spread over several racks while, "
        "when they arrived, one rack had enough free 4-GPU slots for all their pods.",
        "- Refused: replicas the system could not place whole when they arrived although the "
        "demand was under the target; rackscale refuses rather than split, kube-scheduler splits.",
        "- Whole racks free and the largest replica one rack still takes (in 4-GPU pods) are read "
        "after the last event, and averaged over the samples of the second half of the stream "
        "(the end point alone is one draw); the plot shows them over the whole stream.",
        "",
    ]
    return md


def _section_optimal(part: dict[str, Any], images: dict[str, str]) -> list[str]:
    md = ["## 4. GPUs placed against the optimum (OR-Tools CP-SAT)", "", *_failed(part)]
    if "families" not in part:
        return md
    md += [
        f"Random instances, {part['instances']} per family: 4-16 racks, about 20% of trays "
        "part-used by other pods, and replicas of 8-72 GPUs (pods of 2 or 4 GPUs, TP inside "
        "the rack, `replicaScope: Rack`) offered in a random order. The engine places them as "
        "the operator does when they wait together (one pass: largest first, other orders "
        "tried when one is left out, each replica whole or refused), and also one at a time in "
        "arrival order; CP-SAT chooses the set and "
        "the racks that place the most GPUs under the same constraints (each replica whole in "
        "one rack; per rack, trays with 4 free GPUs take one 4-GPU pod or two 2-GPU pods, trays "
        f"with 2-3 free take one 2-GPU pod). Solver limit {part['solver_seconds_limit']} s per "
        "instance; an instance not proven optimal is compared with the solver's upper bound, "
        "which can only lower the ratio. No kube-scheduler row: it does not keep a replica in "
        "one rack, so it solves a different problem.",
        "",
        "| demand (of free GPUs) | order | ratio at the 95th-percentile instance | median | worst "
        "| proven optimal | optimum places all |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fam in part["families"].values():
        lo, hi = fam["demand_of_free_gpus"]
        for key, label in (("one_pass", "one pass (the operator)"), ("one_at_a_time",
                           "one at a time, arrival order")):  # fmt: skip
            f = fam[key]
            md.append(
                f"| {lo:.0%}-{hi:.0%} | {label} | {_pct(f['p95_instance_ratio'])} | "
                f"{_pct(f['median_ratio'])} | {_pct(f['worst_ratio'])} | "
                f"{fam['proven_optimal']} | {fam['all_placed_by_optimum']} |"
            )
    md += [
        "",
        *_img(images, "optimal"),
        "The 95th-percentile instance is the ratio that 95% of instances reach or beat. The "
        "target is judged on the pass, which is what the operator does with every replica "
        "waiting at once (a GitOps sync, a pool coming up, room freed for several). One at a "
        "time, the engine cannot know what arrives next: on one empty rack, an 8-GPU replica "
        "placed first leaves no room for a 72-GPU one after it, so when more is offered than "
        "fits, that row measures arrival luck as much as packing. When demand is under the "
        "free GPUs, both rows are packing quality alone.",
        "",
    ]
    return md


def _code(part: dict[str, Any]) -> list[str]:
    code = part.get("code") or {}
    if not code:
        return []
    return [f"Old: {code['old']}. New: {code['new']}. How: {code['how']}.", ""]


def _overhead_row(r: dict[str, Any], side: str) -> str:
    f = r[side]
    if "error" in f:
        return f"| {r['racks']} | {side} | failed: `{f['error']}` | | | | | | |"
    return (
        f"| {r['racks']} | {side} | {f['nodes']} | {f['deployments']} | {f['pods']} | "
        f"{f['steady_pass_ms']['p50']} / {f['steady_pass_ms']['p99']} ms | "
        f"{f['placing_pass_ms']['p50']} / {f['placing_pass_ms']['p99']} ms | "
        f"{f['pool_status_ms']} ms | {f['rss_mib']} MiB ({f['rss_before_view_mib']} MiB) |"
    )


def _section_overhead(part: dict[str, Any]) -> list[str]:
    md = ["## 5. Operator overhead, old and new", "", *_failed(part), *_code(part)]
    md += [
        "The operator's own `Reconciler` (the code `rackscale run` runs each pass) against an "
        "in-memory cluster view of that size, in a fresh process per size and side: kopf's "
        "indices are dicts of the same slimmed objects, the API writes land in dicts and pinned "
        "pods are bound at once. A real 1,000-rack cluster takes about 10 minutes to load on this "
        "machine, so it is not used; kopf, the watches and the API round trips are not in these "
        "figures. The racks are first filled to about half with one-rack 64-GPU deployments; "
        "then each timed pass reconciles every deployment, once with nothing to do and once "
        "after one more deployment is applied (the pass that places it and creates its 16 pods). "
        "RSS is the process's resident memory after the passes (Python and imports alone "
        "take the `before` figure). The two sides run one after the other at each size.",
        "",
        "| racks | code | nodes | deployments | pods | pass, nothing to do p50 / p99 "
        "| pass placing one p50 / p99 | pool status | RSS (before the view) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    md += [_overhead_row(r, side) for r in part.get("runs", []) for side in ("old", "new")]
    md += [
        "",
        "A pass of the old code reconciles every deployment, so its time grows with their "
        "number; the latency a user sees from apply to pods created is one placing pass plus "
        "the watch and debounce (part 6 measures it live).",
        "",
    ]
    return md


def _live_row(side: str, f: dict[str, Any]) -> str:
    if "error" in f:
        return f"| {side} | failed: `{f['error']}` | | | | | |"
    a, idle = f["apply_to_pods_created_s"], f["idle_cpu"]
    passes = NA if idle["passes"] is None else str(idle["passes"])
    return (
        f"| {side} | {f['fill']['ready_s']} s | {_s(a['p50'])} / {_s(a['p90'])} / {_s(a['max'])} "
        f"| {idle['percent_of_core']:.2f}% ({idle['cpu_s']} s CPU in {idle['window_s']} s) "
        f"| {passes} | {f['rss_mib']} MiB | {f['peak_rss_mib']} MiB |"
    )


def _section_live(part: dict[str, Any]) -> list[str]:
    md = ["## 6. The live operator, old and new (kwok cluster)", "", *_failed(part)]
    if "skipped" in part:
        return [*md, f"Not run: {part['skipped']}.", ""]
    if "old" not in part:
        return md
    p, m = part["parameters"], part["measurement"]
    md += [
        *_code(part),
        f"On the local control plane with the `{part['profile']}` profile ({part['nodes']} kwok "
        "nodes: 20 GB200 NVL72 racks of 18 trays of 4 GPUs), each side in turn: its CRDs are "
        "applied, its operator runs as a subprocess (`python -m rackscale run --all-namespaces`), "
        f"and a namespace of its own gets {p['deployments']} InferenceDeployments of one replica "
        "each (4, 8, 16 and 32 GPUs in pods of 4, about 79% of the GPUs at 150), waited until "
        f"every one is Ready. Then {p['trials']} trials each apply one more of "
        f"{part['trial_gpus']} GPUs ({part['trial_pods']} pods), the operator idles for "
        f"{p['idle_seconds']:.0f} s, and its RSS is read; the namespace is deleted and waited out "
        "before the other side starts.",
        "",
        f"- apply -> all pods created: {m['apply_to_pods_created']}.",
        f"- idle CPU: {m['idle_cpu']}.",
        f"- RSS: {m['rss']}.",
        "",
        "| code | fill Ready after | apply -> pods created p50 / p90 / max | idle CPU, of one core "
        "| passes while idle | RSS | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    md += [_live_row(side, part[side]) for side in ("old", "new") if side in part]
    return [*md, ""]


def _fleet_row(side: str, f: dict[str, Any]) -> str:
    if "error" in f:
        return f"| {side} | failed: `{f['error']}` | | | | | | | | |"
    end = f["at_the_end"]

    def at(key: str) -> str:
        return _s(f[key]) if f[key] is not None else "not reached"

    return (
        f"| {side} | {f['applied_s']} s | {at('observed_s')} | {at('pods_created_s')} "
        f"| {at('ready_s')} | {end['ready']} / {end['no_status']} / {end['failed']} "
        f"| {end['pods']} of {f['pods_wanted']} | {end['services']} of {f['services_wanted']} "
        f"| {f['refused_writes']} | {f['cpu_s']} s ({f['cpu_percent_of_core']}%), "
        f"{f['rss_mib']} / {f['peak_rss_mib']} MiB |"
    )


def _section_fleet(part: dict[str, Any]) -> list[str]:
    many = _get(part, "parameters", "deployments")
    many = f"{many:,}" if isinstance(many, int) else "many"
    md = [f"## 7. The fleet: {many} deployments applied at once, old and new (kwok cluster)", ""]
    md += _failed(part)
    if "skipped" in part:
        return [*md, f"Not run: {part['skipped']}.", ""]
    if "old" not in part and "new" not in part:
        return md
    p, m = part["parameters"], part["measurement"]
    sizes = ", ".join(f"{n} x {gpus}" for gpus, n in part["sizes"].items())
    md += [
        *_code(part),
        f"On the local control plane with the `{part['profile']}` profile ({part['nodes']} kwok "
        f"nodes: {part['racks']} GB200 NVL72 racks, {part['gpus_in_racks']:,} GPUs), each side "
        "in turn: its CRDs are applied, its operator runs as a subprocess, and "
        f"{p['deployments']:,} InferenceDeployments of one replica (GPUs: {sizes}) are created "
        "at once in a namespace of their own. The side ends when every one is Ready, or at "
        f"{p['deadline_s']:.0f} s; the namespace is then deleted and waited out.",
        "",
        f"- clock: {m['clock']}.",
        f"- with a status: {m['observed_s']}; pods created: {m['pods_created_s']}; "
        f"Ready: {m['ready_s']}.",
        f"- failed: {m['failed']}.",
        f"- refused writes: {m['refused_writes']}.",
        f"- CPU: {m['cpu']}; RSS: {m['rss']}.",
        "",
        "| code | created in | all with a status | all pods created | all Ready "
        "| Ready / no status / failed at the end | pods | Services | refused writes "
        "| operator CPU, RSS / peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    md += [_fleet_row(side, part[side]) for side in ("old", "new") if side in part]
    md.append("")
    for side in ("old", "new"):
        kinds = (part.get(side) or {}).get("write_errors_by_kind")
        if kinds:
            shown = ", ".join(f"{k}: {n}" for k, n in kinds.items())
            md += [f"Writes answered with an error, {side}: {shown}.", ""]
    return md
