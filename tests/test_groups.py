"""Serving groups on hand-made racks: where prefill and decode go, together, and why not."""

from __future__ import annotations

from typing import Any

from rackscale.api import InferenceDeployment
from rackscale.placement import Placeable, place_deployment, place_replica
from rackscale.placement.groups import place_group, place_groups, restart_role_replica
from rackscale.placement.reasons import (
    BesideGroup,
    GroupBlockLabelMissing,
    GroupNoRoom,
    NoRackWithRoom,
    Note,
    Reason,
    ServingGroup,
)
from rackscale.topology import Snapshot, build_snapshot
from tests.factory import gpu_pod, nvl72, pool

TEMPLATE = {"spec": {"containers": [{"name": "server"}]}}


def disagg(
    name: str = "ds",
    *,
    replicas: int = 1,
    prefill: tuple[int, int] = (1, 8),
    decode: tuple[int, int] = (1, 32),
    **placement: Any,
) -> InferenceDeployment:
    """Roles prefill and decode: (replicas per group, GPUs of one replica), 4 GPUs per pod."""
    roles = [
        {
            "name": role,
            "replicas": count,
            "parallelism": {"tensor": 4, "data": gpus // 4},
            "gpusPerPod": 4,
            "template": TEMPLATE,
        }
        for role, (count, gpus) in (("prefill", prefill), ("decode", decode))
    ]
    placement.setdefault("rackPool", "gb200")
    body = {"replicas": replicas, "roles": roles, "placement": placement}
    return InferenceDeployment.model_validate(
        {"metadata": {"name": name, "namespace": "llm"}, "spec": body}
    )


def racks(busy: dict[int, int] | None = None, count: int = 3, **kw: Any) -> Snapshot:
    """`count` NVL72 racks; `busy` maps a rack to the trays someone else fills."""
    pods = [
        gpu_pod(f"other-{r}-{t}", f"gb200-{r:04d}-{t:02d}", 4)
        for r, trays in (busy or {}).items()
        for t in range(trays)
    ]
    blocks = kw.pop("blocks", 0)
    spec = {"blockLabel": "topology.rackscale.dev/block"} if blocks else {}
    return build_snapshot(nvl72(count, blocks=blocks), pods, [pool(**spec)], **kw)


def test_a_group_lies_in_the_fullest_rack_that_holds_it_whole() -> None:
    snapshot = racks({0: 10, 1: 4})  # free: 32, 56, 72
    decision = place_group(snapshot, disagg(), 0)
    assert decision.placed
    assert decision.racks == ("clique-0001",)  # 40 GPUs: rack 0 has too few, rack 2 stays whole
    assert [m.role for m, _ in decision.roles] == ["prefill", "decode"]
    assert [d.replica for d in decision.decisions] == [0, 100]
    assert snapshot.pools["gb200"].racks["clique-0002"].free == 72


def test_a_group_no_rack_holds_whole_is_refused_with_the_reason_and_nothing_held() -> None:
    dep = disagg(prefill=(1, 16), decode=(1, 32), fallback="Never")  # 48 GPUs, 32 free per rack
    snapshot = racks({0: 10, 1: 10}, count=2)
    decision = place_group(snapshot, dep, 0)
    assert not decision.placed
    assert decision.decisions[0].plan is None
    assert decision.decisions[1].plan is None
    group = ServingGroup(0, "rack", (("prefill", 1, 16), ("decode", 1, 32)), 48)
    assert decision.why == Reason("group-no-room", GroupNoRoom(group, small=(32, 32)))
    assert [d.why for d in decision.decisions] == [
        decision.why,
        Reason("group-no-room", GroupNoRoom(group, small=(32, 32), with_replica=0)),
    ]
    assert all(r.free == 32 for r in snapshot.pools["gb200"].racks.values())


def test_colocate_none_places_the_same_roles_on_different_racks() -> None:
    snapshot = racks({0: 10, 1: 10}, count=2)
    dep = disagg(prefill=(1, 16), decode=(1, 32), colocate="None", fallback="Never")
    decision = place_group(snapshot, dep, 0)
    assert decision.placed
    [prefill], [decode] = (d.plan.racks for d in decision.decisions if d.plan)
    assert prefill != decode  # each fits alone; together they fit no rack


def test_a_rack_that_fits_the_decode_but_not_the_prefill_beside_it_is_passed_over() -> None:
    snapshot = racks({0: 9, 1: 2}, count=2)  # 36 and 64 free
    decision = place_group(snapshot, disagg(), 0)  # 8 + 32 = 40
    assert decision.racks == ("clique-0001",)


def test_colocate_block_keeps_a_group_larger_than_a_rack_in_one_block() -> None:
    snapshot = racks({0: 12, 2: 12}, count=4, blocks=2)  # blocks: racks 0, 2 and 1, 3
    dep = disagg(prefill=(1, 16), decode=(2, 32), colocate="Block")  # 80 GPUs
    decision = place_group(snapshot, dep, 0)
    assert decision.placed
    # 48 free in block 0 cannot hold 80: block 1 (144 free) does, over both its racks.
    assert decision.racks == ("block-1/clique-0001", "block-1/clique-0003")


def test_one_compute_domain_per_group_and_one_pod_of_it_per_tray() -> None:
    snapshot = racks(count=2, compute_domains=True)
    dep = disagg(replicas=2, prefill=(2, 4), decode=(1, 16))  # 24 GPUs, 6 pods per group
    plan = place_deployment(snapshot, dep)
    by_group: dict[str, list[str]] = {}
    for decision in plan.decisions:
        assert decision.plan is not None
        domain = decision.plan.compute_domain
        assert domain is not None
        by_group.setdefault(domain, []).extend(str(p.node) for p in decision.plan.pods)
    assert sorted(by_group) == ["ds-g0", "ds-g1"]
    nodes = [n for names in by_group.values() for n in names]
    assert len(nodes) == len(set(nodes)) == 12  # one pod per tray, no tray in two domains
    assert all(len(names) == 6 for names in by_group.values())


def test_a_tray_holding_another_compute_domain_is_not_used() -> None:
    labels = {"rackscale.dev/compute-domain": "other-0", "rackscale.dev/deployment": "other"}
    pods = [gpu_pod(f"o-{t}", f"gb200-0000-{t:02d}", 1, labels=labels) for t in range(14)]
    snapshot = build_snapshot(nvl72(1), pods, [pool()], compute_domains=True)
    # 4 trays hold no other domain: a group of 5 pods cannot go there, whatever the free GPUs.
    dep = disagg(prefill=(1, 4), decode=(1, 16), fallback="Never")
    assert not place_group(snapshot, dep, 0).placed
    smaller = disagg(prefill=(1, 4), decode=(1, 12), fallback="Never")
    decision = place_group(snapshot, smaller, 0)
    assert decision.placed
    used = {p.node for d in decision.decisions if d.plan for p in d.plan.pods}
    assert used == {f"gb200-0000-{t:02d}" for t in range(14, 18)}


def test_scaling_adds_whole_groups_so_the_ratio_stays() -> None:
    snapshot = racks(count=3)
    dep = disagg(replicas=3, prefill=(1, 8), decode=(2, 16))
    plan = place_deployment(snapshot, dep)
    roles = [dep.spec.role_replica(d.replica).role for d in plan.decisions if d.plan]
    assert roles.count("decode") == 2 * roles.count("prefill") == 6


def test_a_group_that_fits_no_rack_falls_back_whole_to_device_plugin_mode() -> None:
    snapshot = racks({0: 17}, count=1)
    decision = place_group(snapshot, disagg(), 0)
    assert [d.plan.mode for d in decision.decisions if d.plan] == ["DevicePlugin", "DevicePlugin"]
    whys = [d.why for d in decision.decisions]
    assert [(w.code, w.notes[-1]) for w in whys if w] == [("group-no-room", Note("fallback"))] * 2


def test_a_pass_places_the_largest_group_first() -> None:
    snapshot = racks({1: 8}, count=2)  # 72 and 40 free
    small = disagg("small", prefill=(1, 8), decode=(1, 24))  # 32
    large = disagg("large", prefill=(1, 8), decode=(1, 64))  # 72: only the empty rack
    placed = place_groups(snapshot, [Placeable(small, 0), Placeable(large, 0)])
    assert [w.deployment.name for w, _ in placed] == ["large", "small"]
    assert all(d.placed for _, d in placed)
    assert placed[0][1].racks == ("clique-0000",)
    assert placed[1][1].racks == ("clique-0001",)


def test_a_group_goes_back_to_the_rack_it_held() -> None:
    snapshot = racks({0: 4}, count=2)
    decision = place_group(snapshot, disagg(), 0, prefer=("clique-0001",))
    assert decision.racks == ("clique-0001",)


def test_a_lost_role_replica_restarts_beside_its_group_or_not_at_all() -> None:
    snapshot = racks({0: 4}, count=2)  # no ComputeDomains: each role replica restarts alone
    dep = disagg()
    decision = place_group(snapshot, dep, 0)
    (rack,) = decision.racks
    lost = decision.decisions[1]  # the decode
    assert lost.reservation is not None
    lost.reservation.undo()
    again = restart_role_replica(snapshot, dep, 100, decision.racks)
    assert again.plan is not None
    assert again.plan.racks == (rack,)
    assert again.reservation is not None
    again.reservation.undo()
    # Someone takes the room meanwhile: the decode does not go to the empty rack without the
    # prefill; the group is placed again whole instead.
    filler = disagg("filler", prefill=(1, 4), decode=(1, 16), fallback="Never")
    assert place_group(snapshot, filler, 0, prefer=(rack,)).racks == (rack,)
    refused = restart_role_replica(snapshot, dep, 100, decision.racks)
    assert refused.plan is None
    assert refused.why is not None
    assert refused.why.code == "beside-group"
    assert isinstance(refused.why.details, BesideGroup)
    assert refused.why.details.group == 0
    assert refused.why.details.why.code == "no-rack-with-room"
    assert isinstance(refused.why.details.why.details, NoRackWithRoom)


def test_a_returning_role_replica_joins_no_compute_domain_of_its_own() -> None:
    # Lifecycle restarts a group whose pods share a ComputeDomain whole; a member comes back
    # alone only to a group running without one, so it is placed without one too.
    snapshot = racks(count=1, compute_domains=True)
    dep = disagg()
    decision = place_group(snapshot, dep, 0)
    assert decision.compute_domain == "ds-g0"
    assert decision.decisions[1].reservation is not None
    decision.decisions[1].reservation.undo()
    again = restart_role_replica(snapshot, dep, 100, decision.racks)
    assert again.plan is not None
    assert again.plan.racks == decision.racks
    assert again.plan.compute_domain is None


def test_the_engine_does_not_place_a_deployment_with_roles_as_one_replica() -> None:
    snapshot = racks(count=1)
    decision = place_replica(snapshot, disagg(), 0)
    assert decision.plan is None
    assert decision.why == Reason("roles-need-groups")
    assert snapshot.pools["gb200"].racks["clique-0000"].free == 72


def test_a_pass_tries_other_orders_when_largest_first_leaves_a_group_out() -> None:
    def waiting() -> list[Placeable]:
        big = disagg("big", prefill=(1, 4), decode=(1, 24), fallback="Never")  # 28
        small = [
            disagg(f"s{i}", prefill=(1, 4), decode=(1, 16), fallback="Never") for i in range(3)
        ]  # 20 each
        return [Placeable(big, 0), *(Placeable(d, 0) for d in small)]

    # 48 and 40 free: largest first puts 28 on the 40 (best fit) and then fits only two of 20.
    first = place_groups(racks({0: 6, 1: 8}, count=2), waiting(), tries=0)
    assert sum(d.placed for _, d in first) == 3
    placed = place_groups(racks({0: 6, 1: 8}, count=2), waiting())
    assert all(d.placed for _, d in placed)  # 28 + 20 on the 48, 20 + 20 on the 40


def test_colocate_block_without_a_block_label_has_its_own_code() -> None:
    snapshot = racks(count=2)  # the pool has no spec.blockLabel
    decision = place_group(snapshot, disagg(colocate="Block", fallback="Never"), 0)
    group = ServingGroup(0, "block", (("prefill", 1, 8), ("decode", 1, 32)), 40)
    assert decision.why == Reason(
        "group-block-label-missing", GroupBlockLabelMissing(group, "gb200")
    )
    assert [d.why.code for d in decision.decisions if d.why] == ["group-block-label-missing"] * 2
    # A trial without explain knows the cause and words nothing.
    quiet = place_group(snapshot, disagg(colocate="Block", fallback="Never"), 0, explain=False)
    assert quiet.why == Reason("group-block-label-missing")
    assert quiet.reason is None
