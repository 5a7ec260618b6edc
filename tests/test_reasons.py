"""The words of every reason code and note, rendered from typed details."""

from __future__ import annotations

import pytest

from rackscale.api.inferencedeployment import MemoryNeed
from rackscale.placement.reasons import (
    DETAILS,
    REASON_CODES,
    BesideGroup,
    BlockRoom,
    Details,
    GpuMemory,
    GroupBlockLabelMissing,
    GroupCannotGrow,
    GroupNoRoom,
    InPool,
    Kept,
    MemoryRefused,
    NoNodeWithRoom,
    NoRacksWithRoom,
    NoRackWithRoom,
    Note,
    PodTooLarge,
    PoolEmpty,
    Problem,
    Reason,
    ReasonCode,
    ServingGroup,
    summarize,
)

GIB = 1024
BF16_405B = MemoryNeed(
    weights_mib=772_504, kv_cache_mib=0, overhead_mib=16 * GIB, gpus=8, precision="bf16"
)
DISAGG = ServingGroup(0, "rack", (("prefill", 1, 16), ("decode", 1, 32)), 48)
ROOM = NoRackWithRoom(4, (Problem("too-few", 2),))

# (code, details, the sentence a person reads): one row per code at least.
RENDERED: list[tuple[ReasonCode, Details | None, str]] = [
    ("pool-missing", InPool("nope"), "RackPool nope does not exist"),
    (
        "pool-empty",
        PoolEmpty("gb200", "nvidia.com/gpu.clique"),
        "RackPool gb200 has no racks: no node matches its nodeSelector and carries the label "
        "nvidia.com/gpu.clique",
    ),
    (
        "pool-empty",
        PoolEmpty("gb200", "nvidia.com/gpu.clique", shared=1),
        "RackPool gb200 has no racks: its 1 matching node is selected by another RackPool too",
    ),
    (
        "block-label-missing",
        InPool("gb200"),
        "replicaScope Block needs spec.blockLabel on RackPool gb200; "
        "set it, or use replicaScope Rack or Any",
    ),
    (
        "pod-too-large",
        PodTooLarge("hgx", 8, 8, nvlink_gpus=16, tensor=16),
        "16 GPUs that must share NVLink (tensor 16, expert 1, gpusPerPod 8) "
        "cannot fit one node of RackPool hgx (at most 8 GPUs)",
    ),
    (
        "pod-too-large",
        PodTooLarge("gb200", 4, 8),
        "a pod of 8 GPUs cannot fit one node of RackPool gb200 (at most 4 GPUs)",
    ),
    (
        "gpu-memory",
        GpuMemory("gb200", BF16_405B, 2, 36, (40 * GIB,), 40 * GIB, 20, "fp6"),
        "the replica needs 770.4 GiB of GPU memory (754.4 GiB of weights at bf16, "
        "16 GiB runtime overhead), 96.3 GiB on each of its 8 GPUs: all 2 racks (36 nodes) of "
        "RackPool gb200 have GPUs with too little memory (40 GiB); it would fit on 20 or more "
        "GPUs of 40 GiB, or on 8 GPUs at precision fp6",
    ),
    (
        "no-rack-with-room",
        NoRackWithRoom(
            32,
            (
                Problem("too-few", 16),
                Problem("degraded", 12),
                Problem("too-few", 8),
                Problem("held", 0, "llm/kimi"),
            ),
        ),
        "no rack holds 32 free GPUs in one NVLink domain: 2 racks have too few free (8, 16), "
        "1 is Degraded, 1 is held exclusively by llm/kimi",
    ),
    (
        "no-rack-with-room",
        NoRackWithRoom(144, (Problem("in-use"),), cannot_span=True),
        "no rack holds 144 free GPUs in one NVLink domain: 1 rack is in use (an exclusive "
        "replica takes whole free racks); its tensor- and expert-parallel groups and pods need "
        "144 GPUs in one NVLink domain, so it cannot span racks",
    ),
    (
        "no-node-with-room",
        NoNodeWithRoom(8, (Problem("unavailable"),), most=4),
        "no node holds 8 free GPUs (replicaScope Node): 1 rack is Unavailable; "
        "the most free on one node of the other racks is 4",
    ),
    (
        "no-node-with-room",
        NoNodeWithRoom(8, (), most=4),
        "no node holds 8 free GPUs (replicaScope Node): the most free on one node is 4",
    ),
    (
        "no-block-with-room",
        NoRacksWithRoom(
            144,
            18,
            8,
            (Problem("held", 0, "research/kimi-k2"),),
            (BlockRoom("b0", 10, (40, 40)), BlockRoom("b1", 9, (72,))),
            unlabeled=2,
        ),
        "no block holds 144 free GPUs as 18 parts of 8 (whole tensor- and expert-parallel "
        "groups and pods): 2 racks carry no block label; block b0 has room for 10 parts (racks "
        "with 40, 40 free); block b1 has room for 9 parts (racks with 72 free); 1 rack is held "
        "exclusively by research/kimi-k2",
    ),
    (
        "no-racks-with-room",
        NoRacksWithRoom(128, 16, 8, rooms=(BlockRoom(None, 1, (8,)),)),
        "no set of racks in the pool holds 128 free GPUs as 16 parts of 8 (whole tensor- and "
        "expert-parallel groups and pods): the pool has room for 1 part (racks with 8 free)",
    ),
    (
        "no-racks-with-room",
        NoRacksWithRoom(128, 16, 8),
        "no set of racks in the pool holds 128 free GPUs as 16 parts of 8 (whole tensor- and "
        "expert-parallel groups and pods): the pool has no racks",
    ),
    ("terminating", None, "its old pods are still terminating"),
    ("roles-need-groups", None, "spec.roles: place its serving groups (placement.groups)"),
    (
        "group-no-room",
        GroupNoRoom(DISAGG, (32, 32)),
        "no rack holds serving group 0 whole (1 prefill of 16, 1 decode of 32 = 48 GPUs): "
        "2 racks have fewer free GPUs (32, 32)",
    ),
    (
        "group-no-room",
        GroupNoRoom(DISAGG, misses=(("decode", 1),), with_replica=0),
        "placed with replica 0: no rack holds serving group 0 whole (1 prefill of 16, 1 decode "
        "of 32 = 48 GPUs): 1 rack has no room for a decode replica beside the rest",
    ),
    (
        "group-block-label-missing",
        GroupBlockLabelMissing(
            ServingGroup(1, "block", (("prefill", 1, 8), ("decode", 2, 16)), 40), "gb200"
        ),
        "no block holds serving group 1 whole (1 prefill of 8, 2 decode of 16 = 40 GPUs): "
        "colocate Block needs spec.blockLabel on RackPool gb200",
    ),
    (
        "beside-group",
        BesideGroup(0, Reason("no-rack-with-room", ROOM)),
        "it no longer fits beside serving group 0: no rack holds 4 free GPUs in one NVLink "
        "domain: 1 rack has too few free (2)",
    ),
    (
        "group-cannot-grow",
        GroupCannotGrow(1, "prefill", "rack", Reason("no-rack-with-room", ROOM)),
        "serving group 1 cannot grow by this prefill replica in its rack; the group serves as it "
        "was: no rack holds 4 free GPUs in one NVLink domain: 1 rack has too few free (2)",
    ),
]


@pytest.mark.parametrize(("code", "details", "text"), RENDERED)
def test_each_code_is_worded_from_its_typed_details(
    code: ReasonCode, details: Details | None, text: str
) -> None:
    why = Reason(code, details)
    assert why.explained
    assert why.text == str(why) == text
    expected = DETAILS[code]
    assert details is None if expected is None else isinstance(details, expected)


def test_every_code_has_a_detail_type_and_a_rendered_sentence() -> None:
    assert set(DETAILS) == set(REASON_CODES)
    assert {code for code, _, _ in RENDERED} == set(REASON_CODES)


def test_a_reason_decided_without_explain_has_its_code_and_no_words() -> None:
    why = Reason("no-rack-with-room")
    assert not why.explained
    assert why.text == ""
    assert why.with_replica(0) == why


def test_notes_follow_the_sentence_in_order() -> None:
    refused = MemoryRefused(((40 * GIB, 18),), BF16_405B)
    why = (
        Reason("no-rack-with-room", ROOM)
        .noted(Note("memory-refused", refused))
        .noted(Note("kept", Kept(("clique-0001", "clique-0002"))))
        .noted(Note("fallback"))
    )
    assert why.text == (
        "no rack holds 4 free GPUs in one NVLink domain: 1 rack has too few free (2); "
        "18 nodes refused for memory (GPUs of 40 GiB): the replica needs 770.4 GiB of GPU "
        "memory (754.4 GiB of weights at bf16, 16 GiB runtime overhead), 96.3 GiB on each of "
        "its 8 GPUs; racks clique-0001, clique-0002 are kept for it: it fits there once the "
        "GPUs being released are free; running in device-plugin mode"
    )
    assert Note("kept", Kept(("clique-0001",))).text.startswith("rack clique-0001 is kept for it")


def test_summary_counts_racks_by_cause_and_lists_the_first_eight_numbers() -> None:
    problems = [Problem("too-few", n) for n in (64, 8, 16, 0, 4, 32, 12, 20, 24)]
    assert summarize(problems) == "9 racks have too few free (0, 4, 8, 12, 16, 20, 24, 32, ...)"
    mixed = [
        Problem("kept", 0, "llm/big"),
        Problem("memory", 80 * GIB),
        Problem("tenant", 0, "batch"),
        Problem("compute-domain", 3),
        Problem("memory", 40 * GIB + 512),
        Problem("split", 12),
    ]
    assert summarize(mixed) == (
        "1 rack has its free GPUs split across nodes (12), 1 has too few trays holding no other "
        "ComputeDomain (one pod per tray) (3), 2 have GPUs with too little memory for it "
        "(40.5 GiB, 80 GiB), 1 holds pods of namespace batch (tenancy Exclusive), 1 is kept for "
        "llm/big (GPUs there are being released)"
    )
    assert summarize([]) == "the pool has no racks"
