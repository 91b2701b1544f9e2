"""A ``hydra/launcher=slurm`` sweep's jobs: waiting for them where SLURM keeps no accounting, their
exit codes, and how SLURM ended those that did not end themselves."""

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

from reslab.run_folder import STATUS_FILE, read_status, write_status


def quiet_slurm_polling() -> None:
    """Without accounting (no slurmdbd) submitit's ``sacct`` polls fail, each with an error and
    three warnings; once the first fails, ask ``squeue`` quietly: the same states while a job is
    queued, running or just ended (``MinJobAge``); one gone from the queue is done (its result, or
    submitit's error naming its logs). Private in submitit: ``SlurmJob.watcher``, its ``_delay_s``
    and ``_registered`` (tests/test_upstream.py)."""
    if not isinstance(SlurmJob.watcher, _SqueueWhenNoAccounting):
        SlurmJob.watcher = _SqueueWhenNoAccounting(delay_s=SlurmJob.watcher._delay_s)


class _SqueueWhenNoAccounting(SlurmInfoWatcher):
    GONE = "NOT_IN_QUEUE"  # not an incomplete state for submitit: the job is done
    squeue: bool | None = None  # None until sacct is tried, once

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()
        if command is None or not self.squeue:
            return command
        return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", "--me"]

    def update(self) -> None:
        if self.squeue is None and (command := self._make_command()) is not None:
            probe = subprocess.run(command, capture_output=True)
            self.squeue = probe.returncode != 0
            if self.squeue:
                error = probe.stderr.decode(errors="replace").strip()
                logging.getLogger(__name__).debug("sacct failed (%s): asking squeue", error)
        super().update()  # with no job to ask about, nothing

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if not self.squeue:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        info = super().read_info("JobID|State|NodeList\n" + text)
        for job_id in self._registered:
            info.setdefault(job_id, {"JobID": job_id, "State": self.GONE, "NodeList": ""})
        return info


# SLURM's job states that end a job from outside (the job itself ends COMPLETED or FAILED).
ENDED_BY_SLURM = ("CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                  "BOOT_FAIL", "DEADLINE")  # fmt: skip
# What a job ended from outside says of itself: killed (running), or stopped on SLURM's signal.
ENDED_BY_SIGNAL_OR_KILL = ("running", "preempted", "interrupted")
_ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
           "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING")  # fmt: skip


class SlurmExitCode(Callback):
    """A Hydra callback (conf/train.yaml): in a SLURM job of a sweep (submitit's), a job that
    failed exits with status 1, so SLURM's record says FAILED (Hydra would return normally)."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or job_return.status != JobStatus.FAILED:
            return
        if read_status(Path(config.hydra.runtime.output_dir)).get("status") == "failed":
            raise SystemExit(1)  # Hydra's callbacks warn of other exceptions


def say_how_slurm_ended(sweep_dir: Path, poll_s: float = 2.0) -> None:
    """Waits until no SLURM job of the sweep in ``sweep_dir`` (``.submitit/<job>``) is active,
    then writes ``ended_by_slurm`` (CANCELLED, TIMEOUT, ...) into the status.json of each job
    SLURM ended: one killed while ``running`` becomes ``interrupted``, one stopped keeps its own."""
    tasks = [p.name for p in (sweep_dir / ".submitit").glob("[0-9]*") if p.is_dir()]
    if not tasks or shutil.which("squeue") is None:
        return
    arrays = ",".join(sorted({t.split("_")[0] for t in tasks}))
    while True:
        listed = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i %T",
                                 f"--jobs={arrays}"], capture_output=True, text=True)  # fmt: skip
        states = dict(line.split()[:2] for line in listed.stdout.splitlines() if line.strip())
        if listed.returncode != 0 or not any(s in _ACTIVE for s in states.values()):
            break
        time.sleep(poll_s)
    for folder in (p for p in sweep_dir.iterdir() if (p / STATUS_FILE).is_file()):
        status = read_status(folder)
        state = states.get(str(status.get("slurm_job")))
        if state in ENDED_BY_SLURM and status.get("status") in ENDED_BY_SIGNAL_OR_KILL:
            if status["status"] == "running":  # killed before it could say so
                status["status"] = "interrupted"
            write_status(folder, status.pop("status"), **status, ended_by_slurm=state)
