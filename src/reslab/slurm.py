"""Waiting for a ``hydra/launcher=slurm`` sweep's jobs where SLURM keeps no accounting."""

from __future__ import annotations

import logging
import subprocess

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob


def quiet_slurm_polling() -> None:
    """submitit asks ``sacct`` for the states of a sweep's jobs; where SLURM keeps no accounting
    (no slurmdbd: the common one-node case) sacct fails on every poll, with its error and three
    warnings each time. From the first failure on, reslab's watcher asks ``squeue`` instead,
    quietly: the same states while a job is queued, running or just ended (``MinJobAge``), and
    a job gone from the queue is done (its result, or submitit's error naming its logs).
    Private in submitit: ``SlurmJob.watcher``, the watcher's ``_delay_s`` and ``_registered``
    (tests/test_upstream.py)."""
    if not isinstance(SlurmJob.watcher, _SqueueWhenNoAccounting):
        SlurmJob.watcher = _SqueueWhenNoAccounting(delay_s=SlurmJob.watcher._delay_s)


class _SqueueWhenNoAccounting(SlurmInfoWatcher):
    GONE = "NOT_IN_QUEUE"  # not an incomplete state for submitit: the job is done

    def __init__(self, delay_s: int = 60) -> None:
        super().__init__(delay_s=delay_s)
        self.squeue = False
        self.probed = False  # sacct tried once

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or not self.squeue:
            return command
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", "--me"]

    def update(self) -> None:
        if not self.probed:
            command = self._make_command()
            if command is None:
                return
            probe = subprocess.run(command, capture_output=True)
            self.probed, self.squeue = True, probe.returncode != 0
            if self.squeue:
                logging.getLogger(__name__).debug(
                    "sacct failed (%s): asking squeue",
                    probe.stderr.decode(errors="replace").strip(),
                )
        super().update()

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if not self.squeue:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)
        for job_id in self._registered:
            info.setdefault(job_id, {"JobID": job_id, "State": self.GONE, "NodeList": ""})
        return info
