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


def logical_lines() -> list[str]:
    """The Dockerfile's instructions, continuations joined, comments left out."""
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
    return logical


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults: the only ones FROM may use."""
    args: dict[str, str] = {}
    for line in logical_lines():
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            break
        if word.upper() == "ARG":
            name, _, default = rest.strip().partition("=")
            args[name] = default
    return args


def stages(build_args: dict[str, str] | None = None) -> list[Stage]:
    """The Dockerfile's stages, each with its instructions, FROM's ${ARG}s resolved."""
    values = global_args() | (build_args or {})
    result: list[Stage] = []
    for line in logical_lines():
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word == "ARG" and not result:
            continue
        if word == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.IGNORECASE)
            assert match, f"cannot read FROM {rest!r}"
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m[1] or m[2]], match[1])
            result.append(Stage(image=image, name=match[2]))
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
    builders = {stage.name for stage in all_stages[:-1] if stage.name}
    assert any(re.match(rf"--from=({'|'.join(map(re.escape, builders))})\s", c) for c in copies)
    assert not runtime.args("RUN"), "the runtime stage only copies what the build stage made"


def test_the_base_image_is_one_build_argument() -> None:
    # One ARG names the base of every stage, so a local image can stand in where no registry
    # answers (the kind tests build on one); the default is the pinned public image.
    args = global_args()
    assert "BASE_IMAGE" in args
    froms = [line.split()[1] for line in logical_lines() if line.split()[0].upper() == "FROM"]
    assert froms
    assert set(froms) == {"${BASE_IMAGE}"}
    local = stages({"BASE_IMAGE": "rackscale-kind/python:3.11-bookworm-r1"})
    assert {stage.image for stage in local} == {"rackscale-kind/python:3.11-bookworm-r1"}
    assert [stage.image for stage in stages()] == [args["BASE_IMAGE"]] * len(local)


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


def test_the_user_has_a_name_without_a_passwd_entry() -> None:
    # kopf calls getpass.getuser() at start; for a uid missing from /etc/passwd only $USER (or
    # $LOGNAME) keeps it from raising KeyError (seen on kind, running the operator's image).
    env = " ".join(stages()[-1].args("ENV"))
    assert re.search(r"\b(USER|LOGNAME)=\S+", env)


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
