"""Why racks could not take a replica: counted by cause and worded for a person to act on."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

# Each cause: (singular verb phrase, plural verb phrase); the order is the order of the message.
_PHRASES = {
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


# Causes whose detail is a number (free GPUs, usable trays), listed rather than named.
_COUNTED = ("too-few", "split", "compute-domain", "memory", "degraded")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one rack cannot take a replica: a cause and a detail (free GPUs, namespace, holder)."""

    cause: str
    detail: str = ""


def summarize(problems: list[Problem]) -> str:
    """`2 racks have too few free (8, 16), 1 is Degraded, 1 is held exclusively by llm/kimi`."""
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for p in problems:
        label = "" if p.cause in _COUNTED else p.detail
        grouped[(p.cause, label)].append(p.detail)
    order = list(_PHRASES)
    parts: list[str] = []
    for (cause, label), details in sorted(
        grouped.items(), key=lambda i: (order.index(i[0][0]), i[0][1])
    ):
        n = len(details)
        verb = _PHRASES[cause][0 if n == 1 else 1]
        noun = ("rack" if n == 1 else "racks") if not parts else ""
        text = " ".join(x for x in (str(n), noun, verb) if x)
        if label:
            text += f" {label}"
        elif cause in _COUNTED and cause != "degraded":
            text += (
                " ("
                + ", ".join(sorted(details, key=_number)[:8])
                + (", ..." if n > 8 else "")
                + ")"
            )
        parts.append(text)
    return ", ".join(parts) if parts else "the pool has no racks"


def _number(text: str) -> tuple[int, str]:
    head = text.split(" ", 1)[0]
    return (int(head), text) if head.isdigit() else (0, text)


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
    "group-shares-domain",
    "beside-group",
    "group-cannot-grow",
]
REASON_CODES: tuple[ReasonCode, ...] = get_args(ReasonCode)

# The sentence of each code; `{name}` is filled from the reason's details.
_SENTENCES: dict[ReasonCode, str] = {
    "pool-missing": "RackPool {pool} does not exist",
    "pool-empty": "RackPool {pool} has no racks: {why}",
    "block-label-missing": (
        "replicaScope Block needs spec.blockLabel on RackPool {pool}; "
        "set it, or use replicaScope Rack or Any"
    ),
    "pod-too-large": "{what} cannot fit one node of RackPool {pool} (at most {largest} GPUs)",
    "gpu-memory": "{need}: {where} of RackPool {pool} {verb} GPUs with too little memory "
    "({sizes}); {fits}",
    "no-rack-with-room": "no rack holds {gpus} free GPUs in one NVLink domain: {problems}{span}",
    "no-node-with-room": "no node holds {gpus} free GPUs (replicaScope Node): {problems}",
    "no-block-with-room": "no block holds {gpus} free GPUs as {units} parts of {unit} "
    "(whole tensor- and expert-parallel groups and pods): {problems}",
    "no-racks-with-room": "no set of racks in the pool holds {gpus} free GPUs as {units} parts "
    "of {unit} (whole tensor- and expert-parallel groups and pods): {problems}",
    "terminating": "its old pods are still terminating",
    "roles-need-groups": "spec.roles: place its serving groups (placement.groups)",
    "group-no-room": "{why}",
    "group-shares-domain": "serving group {group} shares a ComputeDomain: it restarts whole",
    "beside-group": "it no longer fits beside serving group {group}: {why}",
    "group-cannot-grow": "serving group {group} cannot grow by this {role} replica in its "
    "{unit}; the group serves as it was: {why}",
}

NoteCode = Literal["memory-refused", "kept", "fallback"]
_NOTES: dict[NoteCode, str] = {
    "memory-refused": "{nodes} refused for memory (GPUs of {sizes}): {need}",
    "kept": "{racks} kept for it: it fits there once the GPUs being released are free",
    "fallback": "running in device-plugin mode",
}


@dataclass(frozen=True, slots=True)
class Note:
    """What follows a reason: a code and its details."""

    code: NoteCode
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why the engine did not place a replica in its pool. Its `code` is what metrics and
    programs read; `text` renders it for a person, the one place words are chosen. A reason
    decided without `explain` carries its code and no details."""

    code: ReasonCode
    details: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()

    @property
    def explained(self) -> bool:
        return bool(self.details) or not _fields(_SENTENCES[self.code])

    @property
    def text(self) -> str:
        if not self.explained:
            return ""
        parts = [_SENTENCES[self.code].format(**self.details)]
        parts += [_NOTES[n.code].format(**n.details) for n in self.notes]
        return "; ".join(parts)

    def noted(self, note: Note) -> Reason:
        return Reason(self.code, self.details, (*self.notes, note))

    def __str__(self) -> str:
        return self.text


def _fields(sentence: str) -> bool:
    return "{" in sentence
