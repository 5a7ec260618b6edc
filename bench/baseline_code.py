"""The old operator beside the new: its code exported once from git, and a way to run either.

"old" is the operator at `OLD_COMMIT`, the last commit before the one-state-per-pass rebuild;
"new" is whatever this checkout holds. The old code is `git archive`d (its `operator/` and
`crds/`) into `bench/.baseline/<sha>/` (git-ignored) the first time it is needed; a clone carries
the full history, so this works on a fresh clone. A module is then run with
`PYTHONPATH=<that export>/operator:<repo root>`: `rackscale` comes from the export, everything
else (bench, tests, e2e) from this checkout.

    python -m bench.baseline_code MODULE [ARGS...]   # run MODULE against the old code
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
OLD_COMMIT = "78a2a8be3e7b2e9b7992e168ddb24106a0ff0f03"
OLD_LABEL = (
    f"the operator at commit {OLD_COMMIT[:10]}, the last before the one-state-per-pass rebuild"
)
ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".baseline"
EXPORTED = ("operator", "crds")


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
    """The directory holding `operator/` and `crds/` as they were at `commit`, made once."""
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


def crd_dir(side: Side) -> Path:
    """That side's CustomResourceDefinitions, as YAML files."""
    return export() / "crds" if side == "old" else ROOT / "crds"


def environ(side: Side, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes `python -m ...` import that side's `rackscale`."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(source_root(side)), str(ROOT)])
    if side == "old":
        _check_imports_old()
    return env


@functools.cache
def _check_imports_old() -> None:
    # PYTHONPATH comes before the editable install's path entry; prove it rather than trust it.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source_root("old")), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", "import rackscale; print(rackscale.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    where = Path(done.stdout.strip() or "?").resolve()
    if done.returncode or not where.is_relative_to(export()):
        raise BaselineError(
            f"with PYTHONPATH={env['PYTHONPATH']}, rackscale imports from {where}, "
            f"not from the export in {export()}: {done.stderr.strip()}"
        )


def describe() -> dict[str, str]:
    """What "old" and "new" are, for the report."""
    head = _git("rev-parse", "--short", "HEAD").decode().strip()
    dirty = bool(_git("status", "--porcelain", "--", "operator").strip())
    return {
        "old": OLD_LABEL,
        "new": f"this checkout, commit {head}" + (" with uncommitted changes" if dirty else ""),
        "old_commit": OLD_COMMIT,
        "how": "the old operator/ and crds/ are `git archive`d into bench/.baseline/<sha>/ and "
        "run with PYTHONPATH=<export>/operator:<repo root>, the new from this checkout; both "
        "run in the same run of `python -m bench`, one after the other",
    }


def run_json(side: Side, module: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """`python -m module args` against that side's code; its last stdout line, a JSON object.

    A failure is returned as {"error": ...} with the tail of its stderr, never raised, so that
    the other side's figures are still reported."""
    try:
        env = environ(side)
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
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
        return {"error": f"python -m {module} {' '.join(args)} exited {done.returncode}: {tail}"}
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    env = environ("old")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
