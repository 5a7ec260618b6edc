"""The old operator beside the new: its code exported once from git, and a way to run either.

"old" is the operator at `OLD_COMMIT`, the last commit before "one plan per pass"; "new" is
whatever this checkout holds. The old commit's `operator/`, `crds/`, `bench/` and `tests/` are
`git archive`d into `bench/.baseline/<sha>/` (git-ignored) the first time they are needed; a
clone carries the full history, so this works on a fresh clone. The old side runs entirely from
that export: `PYTHONPATH=<export>/operator:<export>`, from the directory `<export>`, so its
`rackscale`, its bench drivers and its test helpers are all the old commit's own, as they were
written against each other.

    python -m bench.baseline_code MODULE [ARGS...]   # run the old commit's MODULE, old code
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Literal

Side = Literal["old", "new"]
SIDES: tuple[Side, ...] = ("old", "new")
OLD_COMMIT = "1f15410d037faa84013ab0e5f613957e745927f6"
OLD_LABEL = f'the operator at commit {OLD_COMMIT[:10]}, the last before "one plan per pass"'
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".baseline"
EXPORTED = ("operator", "crds", "bench", "tests")


class BaselineError(RuntimeError):
    """The old code could not be exported or does not import from its export."""


def _git(*args: str) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        stderr = getattr(error, "stderr", b"") or b""
        raise BaselineError(
            f"git {' '.join(args)} failed: {stderr.decode(errors='replace').strip() or error}; "
            f"the old code is commit {OLD_COMMIT}: run from a full clone (`git fetch --unshallow`)"
        ) from error
    return done.stdout


def export(commit: str = OLD_COMMIT) -> Path:
    """The directory holding `operator/`, `crds/`, `bench/` and `tests/` as they were at
    `commit`, made once."""
    target = CACHE / commit
    if (target / ".complete").exists():
        return target
    archive = _git("archive", "--format=tar", commit, *EXPORTED)
    partial = CACHE / f"{commit}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(partial, filter="data")
    (partial / ".complete").write_text(commit + "\n")
    try:
        partial.rename(target)
    except OSError:  # another process made it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def source_root(side: Side) -> Path:
    """The directory `rackscale` is imported from for that side."""
    return export() / "operator" if side == "old" else ROOT / "operator"


def workdir(side: Side) -> Path:
    """The directory that side's processes run from, first on their path: the old side's
    `bench` and `tests` are its export's, the new side's this checkout's."""
    return export() if side == "old" else ROOT


def crd_dir(side: Side) -> Path:
    """That side's CustomResourceDefinitions, as YAML files."""
    return export() / "crds" if side == "old" else ROOT / "crds"


def environ(side: Side, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes `python -m ...` import that side's `rackscale`."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(source_root(side)), str(workdir(side))])
    if side == "old":
        _check_imports_old()
    return env


@functools.cache
def _check_imports_old() -> None:
    # PYTHONPATH comes before the editable install's path entry; prove it rather than trust it.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root("old")), str(export())])}
    done = subprocess.run(
        [sys.executable, "-c", _WHERE_FROM],
        cwd=export(),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = done.stdout.split()
    names = ["rackscale", "bench", *["tests"] * max(1, len(found) - 2)]
    for name, where in zip(names, found or ["?"], strict=False):
        if done.returncode or not Path(where).resolve().is_relative_to(export()):
            raise BaselineError(
                f"with PYTHONPATH={env['PYTHONPATH']}, {name} imports from {where}, "
                f"not from the export in {export()}: {done.stderr.strip()}"
            )


# Where each package comes from (`tests` has no __init__.py: its path, every entry of it).
_WHERE_FROM = (
    "import bench, rackscale, tests; "
    "print(rackscale.__file__, bench.__file__, ' '.join(tests.__path__))"
)


def describe() -> dict[str, str]:
    """What "old" and "new" are, for the report."""
    head = _git("rev-parse", "--short", "HEAD").decode().strip()
    dirty = bool(_git("status", "--porcelain", "--", "operator").strip())
    return {
        "old": OLD_LABEL,
        "new": f"this checkout, commit {head}" + (" with uncommitted changes" if dirty else ""),
        "old_commit": OLD_COMMIT,
        "how": "the old commit's operator/, crds/, bench/ and tests/ are `git archive`d into "
        "bench/.baseline/<sha>/ and run from there with PYTHONPATH=<export>/operator:<export> "
        "(its own drivers and test helpers), the new from this checkout; both run in the same "
        "run of `python -m bench`, one after the other",
    }


def run_json(side: Side, module: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """`python -m module args` with that side's code; its last stdout line, a JSON object.

    A failure is returned as {"error": ...} with the tail of its stderr, never raised, so that
    the other side's figures are still reported."""
    return _run(side, ["-m", module, *args], f"python -m {module} {' '.join(args)}", timeout)


def call_json(
    side: Side, module: str, function: str, args: list[Any], timeout: float = 1800
) -> dict[str, Any]:
    """`module.function(*args)` in a process of its own with that side's code (for a driver
    with no command line that prints JSON); its result, which must be JSON, or {"error": ...}."""
    code = (
        f"import json, sys; from {module} import {function}; "
        f"print(json.dumps({function}(*json.loads(sys.argv[1]))))"
    )
    what = f"{module}.{function}{tuple(args)}"
    return _run(side, ["-c", code, json.dumps(args)], what, timeout)


def _run(side: Side, command: list[str], what: str, timeout: float) -> dict[str, Any]:
    try:
        env = environ(side)
        done = subprocess.run(
            [sys.executable, *command],
            cwd=workdir(side),
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except (BaselineError, subprocess.TimeoutExpired) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-6:])
        return {"error": f"{what} exited {done.returncode}: {tail}"}
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    env = environ("old")
    command = [sys.executable, "-m", *args]
    return subprocess.run(command, cwd=workdir("old"), env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
