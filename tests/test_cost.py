"""Cost per hour: of each deployment's GPUs and of a pool's idle and fragmented GPUs, checked
against arithmetic done by hand. No cluster."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from pydantic import ValidationError

from rackscale.api.inferencedeployment import Model
from rackscale.api.pricing import Price, cost_per_hour, money, parse_price
from rackscale.cli.main import main as cli
from rackscale.cli.racks import as_table
from rackscale.controller import metrics
from rackscale.placement import place_deployment
from rackscale.planner.status import Progress, Sizes, deployment_status, dump, pool_status
from rackscale.topology import build_snapshot
from tests.factory import deployment, hgx, nvl72, pool
from tests.test_status import STAMP, classify, placed

USD = Price(Decimal("3.20"))


def test_prices_multiply_exactly() -> None:
    assert cost_per_hour(64, 0, USD, None) == (Decimal("204.80"), "USD")
    # Device-plugin GPUs count only with an ordinary-node price, in the pool's currency.
    assert cost_per_hour(32, 8, USD, None) == (Decimal("102.40"), "USD")
    assert cost_per_hour(32, 8, USD, Price(Decimal("2.10"))) == (Decimal("119.20"), "USD")
    assert cost_per_hour(32, 8, USD, Price(Decimal("2.10"), "EUR")) == (Decimal("102.40"), "USD")
    assert cost_per_hour(0, 8, None, Price(Decimal("2.10"))) == (Decimal("16.80"), "USD")
    assert cost_per_hour(32, 0, None, Price(Decimal("2.10"))) is None  # pool GPUs unpriced
    assert cost_per_hour(0, 8, None, None) is None
    # Money is Decimal: 0.1 x 3 is 0.30, not 0.30000000000000004.
    assert money(Price(Decimal("0.1")).of(3)) == "0.30"
    assert money(Decimal("180")) == "180.00"
    assert money(Price(Decimal("3.125")).of(3)) == "9.375"


def test_a_price_is_read_with_its_currency_or_refused() -> None:
    assert parse_price("2.10") == Price(Decimal("2.10"), "USD")
    assert parse_price("2.10 EUR") == Price(Decimal("2.10"), "EUR")
    for bad in ("cheap", "-1", "2.10 dollars"):
        with pytest.raises(ValueError, match=r"is not a price|currency must be"):
            parse_price(bad)
    with pytest.raises(ValidationError, match=r"per_gpu_hour|perGpuHour"):
        pool(pricing={"perGpuHour": "3,20"})


def test_pool_status_prices_idle_and_fragmented_gpus() -> None:
    snapshot = build_snapshot(nvl72(4), [], [pool(pricing={"perGpuHour": "3.20"})])
    # Two replicas of 32 GPUs, spread: two racks keep 40 free each, two stay empty.
    place_deployment(snapshot, deployment("ds", replicas=2, tensor=8, data=4, gpusPerPod=4))
    status = pool_status(snapshot.pools["gb200"], {}, [], STAMP)
    assert status.gpus.free == 288 - 64
    assert status.fragmented_gpus == 40 + 40
    assert status.cost is not None
    assert dump(status)["cost"] == {
        "currency": "USD",
        "perGpuHour": "3.20",
        "idlePerHour": "716.80",  # 224 x 3.20
        "fragmentedPerHour": "256.00",  # 80 x 3.20
    }
    assert (
        pool_status(build_snapshot(nvl72(1), [], [pool()]).pools["gb200"], {}, [], "").cost is None
    )
    line = as_table({"gb200": status}).splitlines()[0]
    assert line.endswith(
        "64/288 GPUs in use, idle 716.80 USD/h (224 GPUs; fragmented 256.00, 80 GPUs)"
    )

    collector = metrics.PoolCollector()
    collector.update({"gb200": status})
    samples = _samples(collector)
    assert samples[("rackscale_pool_fragmented_gpus", (("pool", "gb200"),))] == 80
    key = (("currency", "USD"), ("pool", "gb200"))
    assert samples[("rackscale_pool_idle_cost_per_hour", key)] == 716.8
    assert samples[("rackscale_pool_fragmented_cost_per_hour", key)] == 256.0


def test_deployment_status_shows_cost_and_memory_needed_against_its_gpus() -> None:
    dep, pods, nodes = placed()  # 2 replicas of TP 8 x DP 4: 64 GPUs on nvl72 racks
    model = {"name": "m", "parametersBillions": 671, "precision": "fp8", "kvCacheGiB": 100}
    dep = dep.model_copy(
        update={"spec": dep.spec.model_copy(update={"model": Model.model_validate(model)})}
    )
    states = classify(dep, pods, nodes)
    sizes = Sizes(node_memory=dict.fromkeys(nodes, 189471), pool_price=USD)
    status = dump(deployment_status(dep, states, Progress(), "nvidia.com/gpu", STAMP, sizes=sizes))
    assert (status["costPerHour"], status["currency"]) == ("204.80", "USD")  # 64 x 3.20
    assert status["memoryNeededMiB"] == 807852  # see test_memory_fit: 671B fp8 + 100 GiB + 64
    assert [p["gpuMemoryMiB"] for p in status["placements"]] == [32 * 189471] * 2
    unpriced = dump(deployment_status(dep, states, Progress(), "nvidia.com/gpu", STAMP))
    assert "costPerHour" not in unpriced
    assert "gpuMemoryMiB" not in unpriced["placements"][0]  # node memory unknown

    collector = metrics.CostCollector()
    collector.update({("llm", "ds"): ("204.80", "USD")})
    key = (("currency", "USD"), ("deployment", "ds"), ("namespace", "llm"))
    assert _samples(collector)[("rackscale_deployment_cost_per_hour", key)] == 204.8


def _samples(collector: Collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }


def test_plan_prints_cost_per_deployment_and_the_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rack_pool = {
        "apiVersion": "rackscale.dev/v1alpha1",
        "kind": "RackPool",
        "metadata": {"name": "gb200"},
        "spec": {
            "nodeSelector": {"matchLabels": {"nvidia.com/gpu.product": "NVIDIA-GB200"}},
            "pricing": {"perGpuHour": "3.20", "currency": "USD"},
        },
    }
    ordinary = hgx(2, gpus=4, prefix="l40s", product="NVIDIA-L40S")  # in no pool
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump_all([*nvl72(2), *ordinary, rack_pool]))
    deps = []
    for name, spec in {
        "ds": {"parallelism": {"tensor": 8, "data": 4}, "replicas": 2,
               "placement": {"rackPool": "gb200"}},
        "small": {"parallelism": {"tensor": 4}, "replicas": 1},  # device-plugin mode
    }.items():  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "rackscale.dev/v1alpha1",
                    "kind": "InferenceDeployment",
                    "metadata": {"name": name, "namespace": "llm"},
                    "spec": spec,
                }
            )
        )
        deps.append(str(path))
    base = ["plan", "--cluster", str(cluster)]
    assert cli([*base, *deps]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["DEPLOYMENT", "MODE", "PLACED", "GPUS", "COST/H", "RACKS"]
    assert out[1].split()[:6] == ["llm/ds", "Rack", "2/2", "64", "204.80", "USD"]
    assert out[2].split()[:5] == ["llm/small", "DevicePlugin", "1/1", "4", "-"]
    assert out[3] == "total cost: 204.80 USD/h"

    assert cli([*base, "--device-plugin-gpu-hour", "2.10", "-o", "json", *deps]) == 0
    result = json.loads(capsys.readouterr().out)
    costs = [(p["costPerHour"], p["currency"]) for p in result["placements"]]
    assert costs == [("204.80", "USD"), ("8.40", "USD")]  # 64 x 3.20; 4 x 2.10
    assert result["totalCostPerHour"] == {"USD": "213.20"}


def test_the_ordinary_node_price_comes_from_the_flag_or_the_environment() -> None:
    from rackscale.controller.reconcile import Options

    options = Options.from_env({"RACKSCALE_DEVICE_PLUGIN_GPU_HOUR": "2.10 EUR"})
    assert options.ordinary_price == Price(Decimal("2.10"), "EUR")
    assert Options.from_env({}).ordinary_price is None
    with pytest.raises(SystemExit):  # argparse names the flag and the problem
        cli(["run", "--device-plugin-gpu-hour", "cheap"])
