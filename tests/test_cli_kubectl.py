"""What the subcommands share with kubectl: durations, errors on 403, progress on a terminal,
structured explain output."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest

from rackscale.cli import kubectl
from rackscale.cli.explain import Cluster, as_data, explain
from rackscale.cli.main import main
from rackscale.cli.plan import Progress
from tests.test_cli_explain import body, placed_cluster


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", None), ("30s", 30.0), ("1m", 60.0), ("500ms", 0.5), ("5", 5.0)]
)
def test_request_timeout_reads_like_kubectl(text: str, seconds: float | None) -> None:
    assert kubectl.seconds(text) == seconds


def test_a_bad_request_timeout_is_an_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["racks", "--request-timeout", "soon"]) == kubectl.CLUSTER_ERROR
    assert capsys.readouterr().err.startswith("error: --request-timeout: 'soon' is not a duration")


def test_forbidden_names_what_may_not_be_listed() -> None:
    fake = SimpleNamespace(server="https://127.0.0.1:6443")
    error = SimpleNamespace(status=403, reason="Forbidden")
    # A stand-in for the Cluster (no kubeconfig) and its ApiException: explain reads no more.
    message = kubectl.Cluster.explain(fake, error, "list pods --all-namespaces")  # type: ignore[arg-type]  # stand-ins
    assert message.startswith("forbidden: you may not list pods --all-namespaces")
    assert "kubectl auth can-i list pods" in message
    refused = ConnectionRefusedError("refused")
    unreachable = kubectl.Cluster.explain(fake, refused, "list nodes")  # type: ignore[arg-type]  # stand-in
    assert unreachable == "cannot reach the cluster at https://127.0.0.1:6443 (list nodes): refused"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_only_on_a_terminal_and_only_when_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    fast = Progress(after=5)
    fast("reading nodes.yaml")
    fast.done()
    assert terminal.getvalue() == ""
    slow = Progress(after=0.05)
    slow("reading nodes.yaml (60 MB)")
    time.sleep(0.3)
    slow.done()
    assert "reading nodes.yaml (60 MB) ..." in terminal.getvalue()

    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    piped = Progress(after=0.01)
    piped("reading nodes.yaml")
    time.sleep(0.1)
    piped.done()
    assert pipe.getvalue() == ""


def test_explain_as_json_carries_the_explanation_and_the_objects() -> None:
    cluster, _ = placed_cluster()
    raw = body("small", replicas=1, data=1, exclusive=True)
    view = Cluster(raw, cluster.nodes, cluster.pods, cluster.pools, [])
    data = as_data(view)
    assert data["deployment"] == f"{raw['metadata']['namespace']}/small"
    assert data["explanation"] == explain(view).splitlines()
    assert data["pods"] == []
