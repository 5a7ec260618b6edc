"""Reservations of GPUs in the snapshot, undone exactly: reserve, write to the API, or roll back."""

from __future__ import annotations

from dataclasses import dataclass, field

from rackscale.topology.snapshot import Node, Rack


@dataclass(slots=True)
class Reservation:
    """GPUs taken on nodes (and racks held whole) for one replica; `undo` gives them back once."""

    namespace: str
    deployment: str
    domain: str | None = None  # the replica's ComputeDomain (`namespace/name`), if it has one
    takes: list[tuple[Node, int]] = field(default_factory=list)
    holds: list[tuple[Rack, tuple[str, int] | None]] = field(default_factory=list)
    undone: bool = False

    def take(self, node: Node, gpus: int) -> None:
        assert node.rack is not None, f"node {node.name} is in no rack"
        node.rack.use(node, gpus, self.namespace, self.deployment, self.domain)
        self.takes.append((node, gpus))

    def hold(self, rack: Rack, holder: tuple[str, int]) -> None:
        self.holds.append((rack, rack.held_by))
        rack.hold(holder)

    def undo(self) -> None:
        """Release everything this reservation took; calling it again does nothing."""
        if self.undone:
            return
        self.undone = True
        for node, gpus in reversed(self.takes):
            assert node.rack is not None
            node.rack.use(node, -gpus, self.namespace, self.deployment, self.domain)
        for rack, before in reversed(self.holds):
            rack.hold(before)
