"""A command the tests run as its own process group, so that one that hangs (a DDP rank waiting
on a collective, a DataLoader worker) fails its test with every process's Python stack and
leaves nothing behind: ``subprocess.run(timeout=...)`` kills only the first process, and the
ranks and workers it started would keep running into the next tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_group(
    command: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, capture_output=True, text=True)`` in a new session. Past
    ``timeout`` seconds every process of the session gets SIGABRT (``PYTHONFAULTHANDLER=1``
    makes each one print its threads' stacks to the shared stderr), then SIGKILL, and an
    ``AssertionError`` carries the end of what they printed."""
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=cwd, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGABRT)
        try:
            stdout, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
        _signal_group(process.pid, signal.SIGKILL)  # ranks or workers that outlived the first
        raise AssertionError(
            f"{' '.join(command)} still ran after {timeout} s; the stacks of its processes:\n"
            + (stdout[-4000:] + "\n" + stderr[-16000:])
        ) from None
    _signal_group(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
