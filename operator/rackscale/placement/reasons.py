"""Why racks could not take a replica: typed codes and details, worded here for a person to act on.

The engine and `groups` build values only (numbers, names, MiB, nested reasons); every word a
person reads about a placement refusal is chosen in this module.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Literal, get_args

from rackscale.api.inferencedeployment import MemoryNeed

# ---- why one rack cannot take a replica ------------------------------------------------------

Cause = Literal[
    "too-few",
    "split",
    "compute-domain",
    "degraded",
    "unavailable",
    "in-use",
    "memory",
    "tenant",
    "held",
    "kept",
]

# Each cause: (singular verb phrase, plural verb phrase); the order is the order of the message.
_PHRASES: dict[Cause, tuple[str, str]] = {
    "too-few": ("has too few free", "have too few free"),
    "split": ("has its free GPUs split across nodes", "have their free GPUs split across nodes"),
    "compute-domain": (
        "has too few trays holding no other ComputeDomain (one pod per tray)",
        "have too few trays holding no other ComputeDomain (one pod per tray)",
    ),
    "degraded": ("is Degraded", "are Degraded"),
    "unavailable": ("is Unavailable", "are Unavailable"),
    "in-use": (
        "is in use (an exclusive replica takes whole free racks)",
        "are in use (an exclusive replica takes whole free racks)",
    ),
    "memory": (
        "has GPUs with too little memory for it",
        "have GPUs with too little memory for it",
    ),
    "tenant": ("holds pods of namespace", "hold pods of namespace"),
    "held": ("is held exclusively by", "are held exclusively by"),
    "kept": ("is kept for", "are kept for"),
}
_ORDER = {cause: i for i, cause in enumerate(_PHRASES)}
LISTED = 8  # numbers listed after a count of racks before "..."


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one rack cannot take a replica. `count`: its free GPUs (too-few, split, degraded),
    its usable trays (compute-domain) or the MiB of its largest GPUs (memory); `name`: the
    namespace it holds pods of (tenant), or the deployment holding it or kept for (held, kept)."""

    cause: Cause
    count: int = 0
    name: str = ""


def summarize(problems: tuple[Problem, ...] | list[Problem]) -> str:
    """`2 racks have too few free (8, 16), 1 is Degraded, 1 is held exclusively by llm/kimi`."""
    grouped: dict[tuple[Cause, str], list[int]] = defaultdict(list)
    for p in problems:
        grouped[(p.cause, p.name)].append(p.count)
    parts: list[str] = []
    for (cause, name), counts in sorted(grouped.items(), key=lambda i: (_ORDER[i[0][0]], i[0][1])):
        n = len(counts)
        verb = _PHRASES[cause][0 if n == 1 else 1]
        noun = ("rack" if n == 1 else "racks") if not parts else ""
        text = " ".join(x for x in (str(n), noun, verb) if x)
        parts.append(text + _what(cause, name, sorted(counts)))
    return ", ".join(parts) if parts else "the pool has no racks"


def _what(cause: Cause, name: str, counts: list[int]) -> str:
    """What follows the racks of one cause: who holds them, or their numbers listed."""
    if cause == "tenant":
        return f" {name} (tenancy Exclusive)"
    if cause == "kept":
        return f" {name} (GPUs there are being released)"
    if cause == "held":
        return f" {name}"
    if cause == "memory":
        return _listed([f"{gib(c)} GiB" for c in counts], len(counts))
    if cause in {"too-few", "split", "compute-domain"}:
        return _listed([str(c) for c in counts], len(counts))
    return ""


def _listed(items: list[str], n: int) -> str:
    """` (8, 16, ...)`: the first `LISTED` of `n`."""
    return " (" + ", ".join(items[:LISTED]) + (", ..." if n > LISTED else "") + ")"


def gib(mib: int) -> str:
    """MiB as GiB with at most one decimal: `185`, `788.9`."""
    return f"{mib / 1024:.1f}".removesuffix(".0")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _need(need: MemoryNeed) -> str:
    """`the replica needs 788.9 GiB of GPU memory (624.9 GiB of weights at fp8, ...)`."""
    parts = [f"{gib(need.weights_mib)} GiB of weights at {need.precision}"]
    if need.kv_cache_mib:
        parts.append(f"{gib(need.kv_cache_mib)} GiB KV cache")
    parts.append(f"{gib(need.overhead_mib)} GiB runtime overhead")
    return (
        f"the replica needs {gib(need.total_mib)} GiB of GPU memory ({', '.join(parts)}), "
        f"{gib(need.per_gpu_mib)} GiB on each of its {need.gpus} GPUs"
    )


# ---- the details of each code -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InPool:
    """A pool that cannot be used as it is (pool-missing, block-label-missing)."""

    pool: str


@dataclass(frozen=True, slots=True)
class PoolEmpty:
    """A pool without racks: `shared` of its matching nodes are selected by another pool too
    (0: no node matches its nodeSelector and carries `rack_label`)."""

    pool: str
    rack_label: str
    shared: int = 0


@dataclass(frozen=True, slots=True)
class PodTooLarge:
    """What must sit on one node exceeds the pool's largest node (`largest` GPUs): a pod, or
    with nvlinkDomain Node a whole tensor- and expert-parallel group (`nvlink_gpus`)."""

    pool: str
    largest: int
    pod_gpus: int
    nvlink_gpus: int | None = None  # set when NVLink ends at the node
    tensor: int = 1
    expert: int = 1


@dataclass(frozen=True, slots=True)
class GpuMemory:
    """No GPU of the pool holds the replica's share: `sizes_mib` of its GPUs, `small` nodes on
    `racks` racks; what would fit: `more_gpus` GPUs of the largest (`largest_mib`), or the
    highest lower `precision` on the same GPUs."""

    pool: str
    need: MemoryNeed
    racks: int
    small: int
    sizes_mib: tuple[int, ...]
    largest_mib: int
    more_gpus: int | None = None
    precision: str | None = None


@dataclass(frozen=True, slots=True)
class NoRackWithRoom:
    """No rack holds the replica whole; `cannot_span`: its scope would allow several racks,
    but one NVLink group needs them all."""

    gpus: int
    problems: tuple[Problem, ...]
    cannot_span: bool = False


@dataclass(frozen=True, slots=True)
class NoNodeWithRoom:
    """No node holds the replica (replicaScope Node): racks out of reach, and the most free on
    one node of the others (None: no other rack)."""

    gpus: int
    problems: tuple[Problem, ...]
    most: int | None = None


@dataclass(frozen=True, slots=True)
class BlockRoom:
    """Room a block (None: the pool) has for parts of a multi-rack replica."""

    block: str | None
    parts: int
    free: tuple[int, ...]  # free GPUs of each rack with room


@dataclass(frozen=True, slots=True)
class NoRacksWithRoom:
    """No block (no set of racks) holds a multi-rack replica of `units` parts of `unit` GPUs."""

    gpus: int
    units: int
    unit: int
    problems: tuple[Problem, ...] = ()
    rooms: tuple[BlockRoom, ...] = ()
    unlabeled: int = 0  # racks without a block label (replicaScope Block)


@dataclass(frozen=True, slots=True)
class ServingGroup:
    """A serving group as a refusal names it: its index, the unit holding it whole, and each
    role's (name, replicas, GPUs of one)."""

    group: int
    unit: Literal["rack", "block"]
    roles: tuple[tuple[str, int, int], ...]
    gpus: int


@dataclass(frozen=True, slots=True)
class GroupNoRoom:
    """No unit holds the group whole: the free GPUs of units smaller than it, and by role the
    units where that role's replica found no room beside the rest. `with_replica`: this role
    replica is refused with that one (the first of its group), which carries the reason."""

    group: ServingGroup
    small: tuple[int, ...] = ()
    misses: tuple[tuple[str, int], ...] = ()
    with_replica: int | None = None


@dataclass(frozen=True, slots=True)
class GroupBlockLabelMissing:
    """colocate Block on a pool without spec.blockLabel."""

    group: ServingGroup
    pool: str
    with_replica: int | None = None


@dataclass(frozen=True, slots=True)
class BesideGroup:
    """A role replica that no longer fits beside its group, and the engine's reason there."""

    group: int
    why: Reason


@dataclass(frozen=True, slots=True)
class GroupCannotGrow:
    """A role replica added by scaling its role that does not fit in its group's rack (or
    block), and the engine's reason there: the group serves as it was."""

    group: int
    role: str
    unit: str  # rack | block
    why: Reason


Details = (
    InPool
    | PoolEmpty
    | PodTooLarge
    | GpuMemory
    | NoRackWithRoom
    | NoNodeWithRoom
    | NoRacksWithRoom
    | GroupNoRoom
    | GroupBlockLabelMissing
    | BesideGroup
    | GroupCannotGrow
)

# ---- why a replica is not placed in its pool: a code, its details, and one renderer -----------

ReasonCode = Literal[
    "pool-missing",
    "pool-empty",
    "block-label-missing",
    "pod-too-large",
    "gpu-memory",
    "no-rack-with-room",
    "no-node-with-room",
    "no-block-with-room",
    "no-racks-with-room",
    "terminating",
    "roles-need-groups",
    "group-no-room",
    "group-block-label-missing",
    "beside-group",
    "group-cannot-grow",
]
REASON_CODES: tuple[ReasonCode, ...] = get_args(ReasonCode)

# The type of each code's details (None: a code that needs none).
DETAILS: dict[ReasonCode, type[Details] | None] = {
    "pool-missing": InPool,
    "pool-empty": PoolEmpty,
    "block-label-missing": InPool,
    "pod-too-large": PodTooLarge,
    "gpu-memory": GpuMemory,
    "no-rack-with-room": NoRackWithRoom,
    "no-node-with-room": NoNodeWithRoom,
    "no-block-with-room": NoRacksWithRoom,
    "no-racks-with-room": NoRacksWithRoom,
    "terminating": None,
    "roles-need-groups": None,
    "group-no-room": GroupNoRoom,
    "group-block-label-missing": GroupBlockLabelMissing,
    "beside-group": BesideGroup,
    "group-cannot-grow": GroupCannotGrow,
}

_BARE: dict[ReasonCode, str] = {
    "terminating": "its old pods are still terminating",
    "roles-need-groups": "spec.roles: place its serving groups (placement.groups)",
}
_WHOLE = "(whole tensor- and expert-parallel groups and pods)"


def _sentence(code: ReasonCode, d: Details) -> str:
    """The words of a code, from its details."""
    match d:
        case NoRackWithRoom() | NoNodeWithRoom() | NoRacksWithRoom():
            return _no_room(code, d)
        case GroupNoRoom() | GroupBlockLabelMissing() | BesideGroup() | GroupCannotGrow():
            return _group_refused(d)
        case GpuMemory():
            return _gpu_memory(d)
        case InPool() | PoolEmpty() | PodTooLarge():
            return _pool_refused(code, d)


def _pool_refused(code: ReasonCode, d: InPool | PoolEmpty | PodTooLarge) -> str:
    """The pool cannot be used as it is, or has no node large enough for one pod."""
    match d:
        case InPool(pool) if code == "pool-missing":
            return f"RackPool {pool} does not exist"
        case InPool(pool):
            return (
                f"replicaScope Block needs spec.blockLabel on RackPool {pool}; "
                "set it, or use replicaScope Rack or Any"
            )
        case PoolEmpty(pool, label, shared):
            why = (
                f"its {shared} matching node{'s are' if shared > 1 else ' is'} selected by "
                "another RackPool too"
                if shared
                else f"no node matches its nodeSelector and carries the label {label}"
            )
            return f"RackPool {pool} has no racks: {why}"
        case PodTooLarge():
            what = (
                f"{d.nvlink_gpus} GPUs that must share NVLink (tensor {d.tensor}, expert "
                f"{d.expert}, gpusPerPod {d.pod_gpus})"
                if d.nvlink_gpus is not None
                else f"a pod of {d.pod_gpus} GPUs"
            )
            return f"{what} cannot fit one node of RackPool {d.pool} (at most {d.largest} GPUs)"


def _no_room(code: ReasonCode, d: NoRackWithRoom | NoNodeWithRoom | NoRacksWithRoom) -> str:
    """No rack, node or set of racks with room: what each rack lacks."""
    match d:
        case NoRackWithRoom(gpus, problems, cannot_span):
            span = (
                f"; its tensor- and expert-parallel groups and pods need {gpus} GPUs in one "
                "NVLink domain, so it cannot span racks"
                if cannot_span
                else ""
            )
            return (
                f"no rack holds {gpus} free GPUs in one NVLink domain: {summarize(problems)}{span}"
            )
        case NoNodeWithRoom(gpus, problems, most):
            parts = [summarize(problems)] if problems else []
            if most is not None:
                others = " of the other racks" if problems else ""
                parts.append(f"the most free on one node{others} is {most}")
            return f"no node holds {gpus} free GPUs (replicaScope Node): {'; '.join(parts)}"
        case NoRacksWithRoom():
            where = "block" if code == "no-block-with-room" else "set of racks in the pool"
            return (
                f"no {where} holds {d.gpus} free GPUs as {d.units} parts of {d.unit} {_WHOLE}: "
                + _no_racks(d)
            )


def _group_refused(
    d: GroupNoRoom | GroupBlockLabelMissing | BesideGroup | GroupCannotGrow,
) -> str:
    """A serving group not placed whole, or a role replica not placed beside its group."""
    match d:
        case GroupNoRoom(group, small, misses, first):
            parts = []
            if small:
                frees = ", ".join(str(f) for f in small)
                parts.append(f"{_units(len(small), group.unit)} fewer free GPUs ({frees})")
            for role, n in misses:
                parts.append(
                    f"{_units(n, group.unit)} no room for a {role} replica beside the rest"
                )
            why = "; ".join(parts) or f"the pool has no {group.unit}"
            return _with(first, f"{_group(group)}: {why}")
        case GroupBlockLabelMissing(group, pool, first):
            why = f"colocate Block needs spec.blockLabel on RackPool {pool}"
            return _with(first, f"{_group(group)}: {why}")
        case BesideGroup(group, why):
            return f"it no longer fits beside serving group {group}: {why.text}"
        case GroupCannotGrow(group, role, unit, why):
            return (
                f"serving group {group} cannot grow by this {role} replica in its {unit}; the "
                f"group serves as it was: {why.text}"
            )


def _gpu_memory(d: GpuMemory) -> str:
    sizes = ", ".join(f"{gib(mib)} GiB" for mib in d.sizes_mib)
    where = (
        f"all {d.racks} racks ({d.small} nodes)"
        if d.racks > 1
        else f"its one rack ({d.small} nodes)"
    )
    verb = "have" if d.racks > 1 else "has"
    ways = []
    if d.more_gpus is not None:
        ways.append(f"on {d.more_gpus} or more GPUs of {gib(d.largest_mib)} GiB")
    if d.precision is not None:
        ways.append(f"on {d.need.gpus} GPUs at precision {d.precision}")
    fits = "it would fit " + ", or ".join(ways) if ways else "it fits no GPU of the pool"
    if d.precision is None:
        fits += f"; no lower precision fits {d.need.gpus} GPUs"
    return (
        f"{_need(d.need)}: {where} of RackPool {d.pool} {verb} GPUs with too little memory "
        f"({sizes}); {fits}"
    )


def _no_racks(d: NoRacksWithRoom) -> str:
    short = []
    if d.unlabeled:
        many = d.unlabeled > 1
        short.append(f"{d.unlabeled} rack{'s carry' if many else ' carries'} no block label")
    for room in d.rooms:
        where = f"block {room.block}" if room.block is not None else "the pool"
        frees = ", ".join(str(f) for f in room.free)
        short.append(
            f"{where} has room for {_plural(room.parts, 'part')} (racks with {frees} free)"
        )
    if d.problems:
        short.append(summarize(d.problems))
    return "; ".join(short) or "the pool has no racks"


def _group(g: ServingGroup) -> str:
    """`no rack holds serving group 0 whole (1 prefill of 4, 2 decode of 16 = 36 GPUs)`."""
    parts = ", ".join(f"{n} {name} of {gpus}" for name, n, gpus in g.roles)
    return f"no {g.unit} holds serving group {g.group} whole ({parts} = {g.gpus} GPUs)"


def _units(n: int, unit: str) -> str:
    return f"{n} {unit}{'s have' if n != 1 else ' has'}"


def _with(first: int | None, text: str) -> str:
    return text if first is None else f"placed with replica {first}: {text}"


# ---- what follows a reason ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryRefused:
    """Nodes refused for memory in a pool where others are large enough: (MiB, nodes) by GPU
    size, and the replica's need."""

    sizes: tuple[tuple[int, int], ...]
    need: MemoryNeed


@dataclass(frozen=True, slots=True)
class Kept:
    """Racks kept for a pending replica while the GPUs being released there are freed."""

    racks: tuple[str, ...]


NoteCode = Literal["memory-refused", "kept", "fallback"]
NoteDetails = MemoryRefused | Kept


@dataclass(frozen=True, slots=True)
class Note:
    """What follows a reason: a code and its details."""

    code: NoteCode
    details: NoteDetails | None = None

    @property
    def text(self) -> str:
        match self.details:
            case MemoryRefused(sizes, need):
                nodes = sum(n for _, n in sizes)
                listed = ", ".join(f"{gib(mib)} GiB" for mib, _ in sizes)
                return (
                    f"{_plural(nodes, 'node')} refused for memory (GPUs of {listed}): {_need(need)}"
                )
            case Kept(racks):
                names = ", ".join(racks)
                kept = f"rack {names} is" if len(racks) == 1 else f"racks {names} are"
                return f"{kept} kept for it: it fits there once the GPUs being released are free"
            case None:
                return "running in device-plugin mode"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why the engine did not place a replica in its pool. Its `code` is what metrics and
    programs read, its `details` the typed values behind it (`DETAILS` gives their type by
    code); `text` renders it for a person, the one place words are chosen. A reason decided
    without `explain` carries its code and no details."""

    code: ReasonCode
    details: Details | None = None
    notes: tuple[Note, ...] = ()

    @property
    def explained(self) -> bool:
        return self.details is not None or self.code in _BARE

    @property
    def text(self) -> str:
        if self.details is not None:
            parts = [_sentence(self.code, self.details)]
        elif self.code in _BARE:
            parts = [_BARE[self.code]]
        else:
            return ""
        parts += [n.text for n in self.notes]
        return "; ".join(parts)

    def noted(self, note: Note) -> Reason:
        return Reason(self.code, self.details, (*self.notes, note))

    def with_replica(self, first: int) -> Reason:
        """This serving group's refusal as a later role replica carries it: with the first."""
        if isinstance(self.details, GroupNoRoom | GroupBlockLabelMissing):
            return replace(self, details=replace(self.details, with_replica=first))
        return self

    def __str__(self) -> str:
        return self.text
