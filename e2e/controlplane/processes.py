"""Start control plane processes in their own process groups, and stop them by process id."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

# Children of this Python process, kept so that stopping them also reaps them (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(name: str, argv: list[str], pid_dir: Path, log_dir: Path, cwd: Path | None = None) -> int:
    """Start one component with its output in log_dir/NAME.log; return its pid (= its group id)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pid_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as log:
        # A new session makes the child a process-group leader, so that `down` can signal the
        # whole group and nothing it forked survives; it also detaches it from the terminal.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
        )
    _children[proc.pid] = proc
    (pid_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(pid_dir: Path, name: str) -> int | None:
    """The pid recorded for a component, or None."""
    try:
        return int((pid_dir / f"{name}.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _state(pid: int) -> str | None:
    """The kernel's one-letter process state, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _reap(pid: int) -> None:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]


def alive(pid: int, binary: str | None = None) -> bool:
    """Whether pid runs (not a zombie) and, if given, runs binary: pids get reused."""
    _reap(pid)
    state = _state(pid)
    if state is None or state in "ZX":
        return False
    if binary is None:
        return True
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    # A binary named through a symlink (a virtualenv's python) runs as the file it points to.
    real = os.path.basename(os.path.realpath(binary))
    return os.path.basename(exe).removesuffix(" (deleted)") == real


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append(int(entry.name))
    return members


def stop(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM the process group of pid, SIGKILL it after timeout; True once nothing of it runs."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _group_members(pid):
                return True
            time.sleep(0.05)
    _reap(pid)
    return not _group_members(pid)
