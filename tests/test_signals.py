"""Ctrl-C and SIGTERM (SIGUSR2 under SLURM) stop a run at a whole iteration with a checkpoint
there, status.json ``interrupted`` (``preempted`` in a SLURM job) with ``interrupted_at``, and
the shell's exit status (130, 143); reslab-resume continues it to the uninterrupted run's
metrics.csv, byte for byte. Real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
N = 40  # the reference run's iterations; the interrupted runs are stopped well before
# Logging every 5, validation every 9, checkpoints every 7 iterations: the stop at 12 (SIGTERM)
# falls on none of them; the one at 18 (SIGINT) on a validation.
RUN = [
    "model.depth=8", "data=synthetic", "debug=smoke", "logger=csv", "data.num_train=96",
    "trainer.log_every_n_steps=5", "trainer.val_check_interval=9",
    "callbacks.checkpoint.every_n_train_steps=7",
]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    # this folder (sigkill.PauseAt) and the caller's PYTHONPATH (reslab's src first)
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "SLURM_JOB_ID")}
    return {**env, "PYTHONPATH": path, "WANDB_MODE": "offline", **extra}


def _pause(step: int, file: Path) -> list[str]:
    return ["+callbacks.pause._target_=sigkill.PauseAt", f"+callbacks.pause.step={step}",
            f"+callbacks.pause.file={file}"]  # fmt: skip


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "reslab.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def _signal_when_paused(
    proc: subprocess.Popen, paused: Path, *signums: int, release: bool = True
) -> tuple[int, str]:
    """Waits until ``proc`` holds at its pause, sends ``signums`` (half a second apart: each
    is handled before the next), lets it go on, and returns its exit status and output."""
    deadline = time.monotonic() + 120
    while not paused.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never reached its pause"
        time.sleep(0.05)
    for i, signum in enumerate(signums):
        if i:
            time.sleep(0.5)
        proc.send_signal(signum)
    if release:
        paused.unlink()
    out = proc.communicate(timeout=120)[0]
    return proc.returncode, out


def _run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reslab.cli", *RUN, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip


def _resume(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from reslab.cli import resume_main; resume_main()",
         str(run_dir), *overrides],
        capture_output=True, text=True, timeout=300, env=_env(),
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run: N iterations, same config and seed."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = _run(run, f"optim.max_steps={N}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _stopped(run: Path, status: str = "interrupted") -> int:
    """The checkpoint's iteration, checked against status.json's."""
    recorded = json.loads((run / "status.json").read_text())
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert recorded["status"] == status, recorded
    assert recorded["interrupted_at"] == recorded["iterations"] == step
    return step


@pytest.mark.slow  # the reference run, an interrupted run and its resume
@pytest.mark.parametrize(
    ("signum", "pause", "code"), [(signal.SIGTERM, 11, 143), (signal.SIGINT, 17, 130)]
)
def test_a_signalled_run_saves_its_iteration_and_resumes_to_the_same_metrics(
    tmp_path: Path, reference: Path, signum: int, pause: int, code: int
) -> None:
    run, paused = tmp_path / "run", tmp_path / "paused"
    proc = _start([*RUN, "optim.max_steps=100000", *_pause(pause, paused),
                   f"hydra.run.dir={run}"], _env())  # fmt: skip
    returncode, out = _signal_when_paused(proc, paused, signum)
    assert returncode == code, out[-3000:]
    # the signal came during iteration pause + 1's end: that iteration is whole and saved
    assert _stopped(run) == pause + 1
    assert f"interrupted (checkpoint at iteration {pause + 1}); continue it: reslab-resume" in out
    result = _resume(run, f"optim.max_steps={N}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at iteration {pause + 1}" in result.stdout
    assert (run / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["iterations"] == N


def test_a_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    run, paused = tmp_path / "run", tmp_path / "paused"
    proc = _start([*RUN, "optim.max_steps=100000", *_pause(5, paused),
                   f"hydra.run.dir={run}"], _env())  # fmt: skip
    # the pause holds until the second Ctrl-C interrupts it: iteration 6 never ends
    returncode, out = _signal_when_paused(proc, paused, signal.SIGINT, signal.SIGINT,
                                          release=False)  # fmt: skip
    assert returncode == 130, out[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and "interrupted_at" not in status
    assert "SIGINT (a second signal" in status["error"]
    assert "[reslab] resnet-8A: interrupted (its last checkpoint)" in out


def test_sigusr2_in_a_slurm_job_preempts_the_run(tmp_path: Path) -> None:
    run, paused = tmp_path / "run", tmp_path / "paused"
    proc = _start([*RUN, "optim.max_steps=100000", *_pause(3, paused),
                   f"hydra.run.dir={run}"], _env(SLURM_JOB_ID="4242"))  # fmt: skip
    returncode, out = _signal_when_paused(proc, paused, signal.SIGUSR2)
    assert returncode == 143, out[-3000:]
    assert _stopped(run, "preempted") == 4


def test_a_schedulers_sigterm_then_usr2_still_saves_the_iteration(tmp_path: Path) -> None:
    """submitit's own preemption sends SIGTERM and then USR2: the second signal changes nothing
    (only a second Ctrl-C stops at once), so the iteration in progress is still saved."""
    run, paused = tmp_path / "run", tmp_path / "paused"
    proc = _start([*RUN, "optim.max_steps=100000", *_pause(3, paused),
                   f"hydra.run.dir={run}"], _env(SLURM_JOB_ID="4242"))  # fmt: skip
    returncode, out = _signal_when_paused(proc, paused, signal.SIGTERM, signal.SIGUSR2)
    assert returncode == 143, out[-3000:]
    assert _stopped(run, "preempted") == 4


def test_an_interrupted_sweep_job_stops_the_sweep(tmp_path: Path) -> None:
    sweep, paused = tmp_path / "sweep", tmp_path / "paused"
    proc = _start(["-m", *RUN, "seed=0,1", "optim.max_steps=100000", *_pause(3, paused),
                   f"hydra.sweep.dir={sweep}"], _env())  # fmt: skip
    returncode, out = _signal_when_paused(proc, paused, signal.SIGTERM)
    assert returncode == 143, out[-3000:]
    jobs = sorted(p.parent.name for p in sweep.glob("*/status.json"))
    assert len(jobs) == 1, jobs  # the second job never started
    assert _stopped(sweep / jobs[0]) == 4


def test_a_stopped_fit_passes_the_signal_to_the_handler_there_before_lightnings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real fit: while it trains, a signal reaches StopOnSignal alone (not Lightning's SIGTERM
    handler, which would stop without a checkpoint and call submitit's at once); once it has
    stopped, the handlers there before fit are back and the signal goes to submitit's (it
    requeues the job)."""
    import lightning as L

    from reslab.signals import RunInterrupted, StopOnSignal

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.layer(batch).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(torch.ones(64, 1), batch_size=2)

    class SignalAt(L.Callback):
        def __init__(self, signum: int) -> None:
            self.signum = signum

        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if trainer.global_step == 2:
                os.kill(os.getpid(), self.signum)

    called: list = []

    def submitit(signum: int, frame: object) -> None:
        called.append(signum)

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        for signum in (signal.SIGUSR2, signal.SIGTERM):
            for s in before:
                signal.signal(s, submitit)
            stopper = StopOnSignal()
            trainer = L.Trainer(
                max_steps=10, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False,
                callbacks=[stopper, SignalAt(signum)],
            )  # fmt: skip
            with pytest.raises(RunInterrupted) as stop:
                trainer.fit(Tiny())
            assert (stop.value.signum, stop.value.step) == (signum, 3)  # the next whole one
            assert called == [] and trainer.global_step == 3
            assert all(signal.getsignal(s) is submitit for s in before)
            stopper.pass_on()
            assert called == [signum]
            called.clear()
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
