"""bench.disagg on a small stream: both systems see the same groups, and the colocated one keeps
every placed group in one rack (guarantee 15), while the figures of the other are measured."""

from __future__ import annotations

from bench import disagg


def test_the_same_stream_through_both_systems() -> None:
    result = disagg.run(racks=4, events=120, seed=3)
    colocated = result["systems"]["colocate: Rack"]
    independent = result["systems"]["independent deployments"]
    for system in (colocated, independent):
        assert system["offered"] == result["arrivals"]
        assert system["placed"] + system["refused"] == system["offered"]
        assert 0 <= system["after_churn"]["whole_racks_free"] <= 4
    assert colocated["same_nvlink_domain"] == colocated["placed"] > 0
    assert colocated["same_nvlink_domain_share"] == 1.0
    assert 0 <= independent["same_nvlink_domain"] <= independent["placed"]


def test_a_group_placed_in_part_as_independent_deployments_is_given_back() -> None:
    system = disagg.Independent(racks=1)
    assert system.arrive(0, "large") is not None  # 64 of 72 GPUs, 16 of 18 trays
    assert system.arrive(1, "small") is None  # the decode fits the 2 trays left, the prefill not
    assert sum(n.free for n in system.snapshot.nodes.values()) == 8
