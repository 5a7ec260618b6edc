"""The chart's alerts (charts/rackscale/files/alerts.yaml): each expression, parsed by a PromQL
parser and evaluated against sample series of the operator's own metrics, fires when it should
and stays quiet when it should. promtool does not build on the machines this is tested on; the
evaluator below covers the PromQL the rules use (selectors, increase, sum, or, vector,
comparisons), with `increase` not extrapolated to the window's edges."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import promql_parser as promql
import pytest
import yaml
from prometheus_client import Counter, Gauge

from rackscale.controller import metrics

ROOT = Path(__file__).resolve().parent.parent
RULES: list[dict[str, Any]] = yaml.safe_load(
    (ROOT / "charts" / "rackscale" / "files" / "alerts.yaml").read_text()
)
DEFAULTS = yaml.safe_load((ROOT / "charts" / "rackscale" / "values.yaml").read_text())["metrics"][
    "prometheusRule"
]
LOOKBACK = 300.0  # Prometheus's staleness window for instant selectors
STEP = 60.0  # rule evaluation interval

Labels = tuple[tuple[str, str], ...]
Series = dict[str, dict[Labels, list[tuple[float, float]]]]  # metric -> labels -> samples
Vector = dict[Labels, float]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, f"{duration!r} is not a duration"
    number, unit = match.groups()
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def evaluate(node: Any, series: Series, t: float) -> Vector | float:
    kind = type(node).__name__
    if kind not in EVALUATORS:
        raise NotImplementedError(kind)
    return EVALUATORS[kind](node, series, t)


def _number(node: Any, series: Series, t: float) -> float:
    return float(node.val)


def _paren(node: Any, series: Series, t: float) -> Vector | float:
    return evaluate(node.expr, series, t)


def _selector(node: Any, series: Series, t: float) -> Vector:
    out = {}
    for labels, samples in series.get(node.name, {}).items():
        recent = [v for at, v in samples if t - LOOKBACK < at <= t]
        if recent:
            out[labels] = recent[-1]
    return out


def _call(node: Any, series: Series, t: float) -> Vector:
    name = node.func.name
    if name == "vector":
        value = evaluate(node.args[0], series, t)
        assert isinstance(value, float), "vector(number) only"
        return {(): value}
    if name == "increase":
        matrix = node.args[0]
        window = matrix.range.total_seconds()
        out = {}
        for labels, samples in series.get(matrix.vector_selector.name, {}).items():
            inside = [v for at, v in samples if t - window < at <= t]
            if len(inside) >= 2:
                total = sum(b - a if b >= a else b for a, b in itertools.pairwise(inside))
                out[labels] = total
        return out
    raise NotImplementedError(name)


def _aggregate(node: Any, series: Series, t: float) -> Vector:
    assert str(node.op) == "sum"
    assert node.modifier is None
    inner = evaluate(node.expr, series, t)
    assert isinstance(inner, dict)
    return {(): sum(inner.values())} if inner else {}


def _binary(node: Any, series: Series, t: float) -> Vector:
    op = str(node.op)
    lhs, rhs = evaluate(node.lhs, series, t), evaluate(node.rhs, series, t)
    if op == "or":
        assert isinstance(lhs, dict)
        assert isinstance(rhs, dict)
        return {**rhs, **lhs}
    compare: dict[str, Callable[[float, float], bool]] = {
        ">": lambda a, b: a > b,
        "==": lambda a, b: a == b,
        "<": lambda a, b: a < b,
    }
    assert isinstance(lhs, dict), "vector <op> number only"
    assert isinstance(rhs, float), "vector <op> number only"
    return {k: v for k, v in lhs.items() if compare[op](v, rhs)}


# promql_parser's node class name -> how this evaluator computes it.
EVALUATORS: dict[str, Callable[[Any, Series, float], Vector | float]] = {
    "NumberLiteral": _number,
    "ParenExpr": _paren,
    "VectorSelector": _selector,
    "Call": _call,
    "AggregateExpr": _aggregate,
    "BinaryExpr": _binary,
}


def rule(name: str) -> dict[str, Any]:
    [found] = [r for r in RULES if r["alert"] == name]
    return found


def fires(name: str, series: Series, at: float) -> bool:
    """Whether the alert is firing at `at`: its expression held at every evaluation for `for`."""
    found = rule(name)
    wait = seconds(
        found["for"]
        .replace("UNPLACED_FOR", DEFAULTS["unplacedFor"])
        .replace("ERRORS_FOR", DEFAULTS["reconcileErrorsFor"])
        .replace("NO_PASS_FOR", DEFAULTS["noPassFor"])
    )
    expr = promql.parse(found["expr"])
    t = at - wait
    while t <= at:
        if not evaluate(expr, series, t):
            return False
        t += STEP
    return True


def gauge(
    values: list[tuple[float, float]], **labels: str
) -> dict[Labels, list[tuple[float, float]]]:
    return {tuple(sorted(labels.items())): values}


def every(step: float, until: float, value: Callable[[float], float]) -> list[tuple[float, float]]:
    return [(t, value(t)) for t in [i * step for i in range(int(until // step) + 1)]]


HOUR = 3600.0


def test_the_rules_use_the_operators_metric_names() -> None:
    exposed = set()
    for metric in vars(metrics).values():
        if isinstance(metric, Counter):
            exposed.add(metric._name + "_total")
        elif isinstance(metric, Gauge):
            exposed.add(metric._name)
    used = set()
    for r in RULES:
        used |= set(re.findall(r"rackscale_[a-z_]+", r["expr"]))
    assert used <= exposed, used - exposed
    assert {r["alert"] for r in RULES} == {
        "RackscaleReplicasUnplaced",
        "RackscaleReconcileErrors",
        "RackscaleNoReconcilePass",
    }


@pytest.mark.parametrize(
    ("waiting_since", "expected"),
    [(None, False), (HOUR - 10 * 60, False), (HOUR - 20 * 60, True)],
)
def test_replicas_unplaced_too_long(waiting_since: float | None, expected: bool) -> None:
    def unplaced(t: float) -> float:
        return 2.0 if waiting_since is not None and t >= waiting_since else 0.0

    series: Series = {
        "rackscale_unplaced_replicas": {
            **gauge(every(30, HOUR, unplaced), reason="no-room"),
            **gauge(every(30, HOUR, lambda t: 0.0), reason="other"),
        }
    }
    assert fires("RackscaleReplicasUnplaced", series, HOUR) is expected


@pytest.mark.parametrize(("errors_per_minute", "expected"), [(0.0, False), (1.0, True)])
def test_reconcile_errors(errors_per_minute: float, expected: bool) -> None:
    series: Series = {
        "rackscale_reconcile_errors_total": {
            **gauge(every(30, HOUR, lambda t: errors_per_minute * t / 60), scope="pass"),
            **gauge(every(30, HOUR, lambda t: 3.0), scope="deployment"),  # old, flat
        }
    }
    assert fires("RackscaleReconcileErrors", series, HOUR) is expected


def test_no_completed_pass_for_too_long() -> None:
    healthy = every(30, HOUR, lambda t: t / 10)  # a pass every 10 s
    stuck_at = HOUR - 25 * 60
    stuck = every(30, HOUR, lambda t: min(t, stuck_at) / 10)
    gone = [(t, v) for t, v in healthy if t < stuck_at]  # the operator and its metrics are gone
    assert not fires(
        "RackscaleNoReconcilePass", {"rackscale_reconcile_passes_total": gauge(healthy)}, HOUR
    )
    assert fires(
        "RackscaleNoReconcilePass", {"rackscale_reconcile_passes_total": gauge(stuck)}, HOUR
    )
    assert fires(
        "RackscaleNoReconcilePass", {"rackscale_reconcile_passes_total": gauge(gone)}, HOUR
    )
    # Stuck for less than the window plus `for`: not yet.
    recent = every(30, HOUR, lambda t: min(t, HOUR - 12 * 60) / 10)
    assert not fires(
        "RackscaleNoReconcilePass", {"rackscale_reconcile_passes_total": gauge(recent)}, HOUR
    )
