"""Why racks could not take a replica: counted by cause and worded for a person to act on."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

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
