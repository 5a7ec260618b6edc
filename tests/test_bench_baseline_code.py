"""The old operator's code is exported from git once and imported from there, not the checkout."""

from __future__ import annotations

import subprocess
import sys

from bench import baseline_code


def test_the_old_side_runs_entirely_from_its_export() -> None:
    """The old commit's operator, CRDs, bench drivers and test helpers, all from the export."""
    exported = baseline_code.export()
    assert exported.name == baseline_code.OLD_COMMIT
    assert (exported / "operator" / "rackscale" / "controller" / "reconcile.py").is_file()
    assert (exported / "crds" / "rackscale.dev_rackpools.yaml").is_file()
    assert (exported / "bench" / "passes.py").is_file()
    assert (exported / "tests" / "fakeapi.py").is_file()
    assert baseline_code.workdir("old") == exported
    assert baseline_code.workdir("new") == baseline_code.ROOT
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import rackscale, bench, tests.fakeapi as f; "
            "print(rackscale.__file__, bench.__file__, f.__file__)",
        ],
        env=baseline_code.environ("old"),
        cwd=baseline_code.workdir("old"),
        capture_output=True,
        text=True,
        check=True,
    )
    for where in done.stdout.split():
        assert where.startswith(str(exported) + "/"), where


def test_each_side_runs_its_own_placement_driver_on_the_same_stream() -> None:
    runs = {
        side: baseline_code.call_json(side, "bench.placement", "run", [10, 7, 5])
        for side in baseline_code.SIDES
    }
    for run in runs.values():
        assert run["racks"] == 10
        assert run["all"]["decisions"] >= 5  # whole deployments: the last one may go past 5
        assert run["decisions_per_second"] > 0
    # the same seed, the same stream of deployments on both sides
    assert runs["old"]["all"]["decisions"] == runs["new"]["all"]["decisions"]


def test_a_driver_that_fails_is_reported_as_its_error() -> None:
    result = baseline_code.run_json("new", "bench.no_such_driver", ["1"])
    assert "bench.no_such_driver" in result["error"]
    assert "No module named" in result["error"]


def test_a_function_that_is_not_there_is_reported_as_its_error() -> None:
    result = baseline_code.call_json("old", "bench.placement", "no_such_function", [])
    assert "bench.placement.no_such_function" in result["error"]
    assert "cannot import name" in result["error"]
