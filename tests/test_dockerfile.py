"""operator/Dockerfile makes a small non-root image running the operator (read, not built)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rackscale.cli.main import parser

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "operator" / "Dockerfile"
IGNORE = ROOT / "operator" / "Dockerfile.dockerignore"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]


def stages() -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuations joined)."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    result: list[Stage] = []
    for line in logical:
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.IGNORECASE)
            assert match, f"cannot read FROM {rest!r}"
            result.append(Stage(image=match[1], name=match[2]))
        else:
            assert result, f"{word} before the first FROM"
            result[-1].instructions.append((word, rest))
    return result


def test_multi_stage_on_pinned_base_images() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        repository, _, tag = stage.image.partition(":")
        assert repository == "python"
        # A full version (3.11.14), never a moving tag such as `latest` or `3.11`.
        assert re.match(r"3\.\d+\.\d+-slim", tag), stage.image
    runtime = all_stages[-1]
    copies = runtime.args("COPY")
    builders = {stage.name for stage in all_stages[:-1]}
    assert any(re.match(rf"--from=({'|'.join(map(re.escape, builders))})\s", c) for c in copies)
    assert not runtime.args("RUN"), "the runtime stage only copies what the build stage made"


def test_runs_as_a_numeric_non_root_user() -> None:
    users = stages()[-1].args("USER")
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so that the kubelet can check runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid.isdigit()
    assert int(gid) > 0


def test_runs_the_operator_for_all_namespaces() -> None:
    runtime = stages()[-1]
    entrypoint = json.loads(runtime.args("ENTRYPOINT")[-1])
    command = json.loads(runtime.args("CMD")[-1])
    assert entrypoint + command == ["python", "-m", "rackscale", "run", "--all-namespaces"]
    args = parser().parse_args(command)
    assert args.command == "run"
    assert args.all_namespaces
    assert not args.namespace


def test_exposes_the_liveness_and_metrics_ports() -> None:
    exposed = {int(port) for line in stages()[-1].args("EXPOSE") for port in line.split()}
    liveness = re.search(r":(\d+)/", parser().parse_args(["run"]).liveness)
    assert liveness
    assert int(liveness[1]) in exposed
    assert 9090 in exposed


def test_bytecode_is_not_written_at_run_time() -> None:
    env = " ".join(stages()[-1].args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # the chart mounts the root filesystem read-only


@pytest.mark.parametrize(
    "source",
    [
        s
        for stage in stages()
        for copy in stage.args("COPY")
        if not copy.startswith("--from")
        for s in copy.split()[:-1]
    ],
)
def test_the_build_context_holds_what_is_copied(source: str) -> None:
    # The context is the repository root, narrowed by the Dockerfile's own ignore file.
    assert (ROOT / source).exists(), source
    kept = {line[1:].rstrip("/") for line in IGNORE.read_text().splitlines() if line[:1] == "!"}
    assert source.rstrip("/") in kept, f"{IGNORE.name} leaves {source} out of the context"
