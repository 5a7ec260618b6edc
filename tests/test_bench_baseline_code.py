"""The old operator's code is exported from git once and imported from there, not the checkout."""

from __future__ import annotations

import subprocess
import sys

from bench import baseline_code


def test_the_old_code_is_exported_and_imported_from_its_export() -> None:
    exported = baseline_code.export()
    assert (exported / "operator" / "rackscale" / "controller" / "reconcile.py").is_file()
    assert (exported / "crds" / "rackscale.dev_rackpools.yaml").is_file()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import rackscale, bench; print(rackscale.__file__, bench.__file__)",
        ],
        env=baseline_code.environ("old"),
        cwd=baseline_code.ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    rackscale_file, bench_file = done.stdout.split()
    assert rackscale_file.startswith(str(exported))
    assert bench_file.startswith(str(baseline_code.ROOT / "bench"))


def test_a_driver_that_fails_is_reported_as_its_error() -> None:
    result = baseline_code.run_json("new", "bench.no_such_driver", ["1"])
    assert "bench.no_such_driver" in result["error"]
    assert "No module named" in result["error"]
