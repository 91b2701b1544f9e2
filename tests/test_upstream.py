"""The private names of other libraries that reslab still uses, one place each, because no public
way does the same. Each test fails with a message that says which upstream name changed and
which reslab piece needs a new way; the rest of reslab uses public APIs only.

- Lightning's ``_SubprocessScriptLauncher`` (reslab.launch.reruns_command_line): which DDP
  strategies start their ranks by running the command line again.
- Lightning's ``ExperimentWriter._check_log_dir_exists``, ``CSVLogger._experiment`` and ``_fs``
  (reslab.loggers.AppendingCSVLogger): metrics.csv kept, not deleted, when a run resumes.
- Lightning's ``RichProgressBar._add_task``, ``_update``, ... (reslab.callbacks.
  IterationProgressBar): one bar over the run's iterations instead of one per epoch.
- Lightning's ``WandbLogger._wandb_init`` (reslab.loggers.wandb_logger): without the
  ``anonymous`` argument that wandb warns about on every run.
- wandb's ``wandb.proto.wandb_internal_pb2.Record`` and the layout of its ``.wandb`` files
  (reslab.loggers.last_wandb_step): the last step a run folder's earlier wandb pieces hold, so
  a resumed offline run logs above it (tests/test_loggers.py reads pieces back through it).
- submitit's class attribute ``SlurmJob.watcher`` and its watcher's ``_delay_s`` and
  ``_registered`` (reslab.launch.quiet_slurm_polling): a SLURM sweep on a cluster without
  accounting asks squeue for its jobs' states instead of sacct's errors on every poll.
"""

from __future__ import annotations

from pathlib import Path

import lightning
import pytest
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import OmegaConf

from reslab.launch import quiet_trainer, reruns_command_line
from reslab.loggers import AppendingCSVLogger

VERSION = f"lightning {lightning.__version__}"


def _require(owner: object, name: str, user: str) -> None:
    assert hasattr(owner, name), (
        f"{VERSION} has no {getattr(owner, '__name__', owner)}.{name} any more: {user} relies on "
        "it (tests/test_upstream.py lists why); find the new way and update it there"
    )


def test_subprocess_script_launcher_tells_which_ddp_reruns_the_command_line() -> None:
    try:
        from lightning.pytorch.strategies.launchers import subprocess_script
    except ImportError as err:  # pragma: no cover - only when Lightning moves it
        pytest.fail(f"{VERSION} moved its launchers ({err}): fix reslab.launch")
    _require(subprocess_script, "_SubprocessScriptLauncher", "reslab.launch.reruns_command_line")
    ddp = {"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 2,
           "strategy": "ddp"}  # fmt: skip
    assert reruns_command_line(quiet_trainer(OmegaConf.create(ddp)))
    spawn = {**ddp, "strategy": "ddp_spawn"}
    assert not reruns_command_line(quiet_trainer(OmegaConf.create(spawn)))
    one = {"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 1}
    assert not reruns_command_line(quiet_trainer(OmegaConf.create(one)))


@pytest.mark.filterwarnings("ignore:Experiment logs directory")
def test_csv_writer_still_deletes_what_the_appending_logger_keeps(tmp_path: Path) -> None:
    _require(ExperimentWriter, "_check_log_dir_exists", "reslab.loggers._AppendingWriter")
    for name in ("_experiment", "_fs"):
        _require(CSVLogger(tmp_path), name, "reslab.loggers.AppendingCSVLogger")
    kept = tmp_path / "kept"
    lightning_folder = tmp_path / "lightning"
    for folder, logger_class in ((lightning_folder, CSVLogger), (kept, AppendingCSVLogger)):
        folder.mkdir()
        (folder / "metrics.csv").write_text("lr,step\n0.1,1\n")  # Lightning sorts the keys
        logger = logger_class(folder, name="", version="")
        logger.log_metrics({"lr": 0.05}, step=2)
        logger.save()
    # Lightning's writer starts metrics.csv afresh (the reason for reslab's override) ...
    assert (lightning_folder / "metrics.csv").read_text().splitlines()[1:] == ["0.05,2"]
    # ... reslab's appends to it.
    assert (kept / "metrics.csv").read_text().splitlines() == ["lr,step", "0.1,1", "0.05,2"]


def test_rich_progress_bar_has_what_the_iteration_bar_overrides() -> None:
    for name in ("_get_train_description", "_add_task", "_update", "_update_metrics",
                 "_initialize_train_progress_bar_id", "train_progress_bar_id"):  # fmt: skip
        _require(RichProgressBar(), name, "reslab.callbacks.IterationProgressBar")


def test_wandb_logger_keeps_its_init_arguments(tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    _require(logger, "_wandb_init", "reslab.loggers.wandb_logger")
    assert isinstance(logger._wandb_init, dict) and "anonymous" in logger._wandb_init, (
        f"{VERSION}'s WandbLogger no longer passes `anonymous` to wandb.init: "
        "reslab.loggers.wandb_logger can stop removing it"
    )


def test_wandb_still_has_the_record_that_its_run_files_hold() -> None:
    import wandb
    from wandb.proto import wandb_internal_pb2

    assert hasattr(wandb_internal_pb2, "Record"), (
        f"wandb {wandb.__version__} has no wandb.proto.wandb_internal_pb2.Record any more: "
        "reslab.loggers.last_wandb_step reads .wandb files with it; find the new way"
    )
    history = wandb_internal_pb2.Record().history
    assert hasattr(history.step, "num"), "wandb's history record lost step.num: fix last_wandb_step"


def test_submitit_slurm_jobs_share_a_watcher_reslab_can_replace() -> None:
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    user = "reslab.launch.quiet_slurm_polling"
    assert isinstance(SlurmJob.__dict__.get("watcher"), SlurmInfoWatcher), (
        "submitit's SlurmJob has no class attribute watcher any more: " + user + " relies on it"
    )
    watcher = SlurmInfoWatcher(delay_s=60)
    for name in ("_delay_s", "_registered"):
        _require(watcher, name, user)
    watcher.register_job("7_1")
    assert watcher._registered == {"7_1"}
    info = watcher.read_info("JobID|State|NodeList\n7_[0-1]|PENDING|\n")
    assert info["7_1"]["State"] == "PENDING"  # what squeue's lines become


def test_each_manual_optimizer_step_counts_an_iteration_and_runs_its_hooks() -> None:
    """reslab.fused counts K iterations per training step with Lightning's public optimizer
    step (no private progress counter): each call advances trainer.global_step and runs every
    callback's on_before_optimizer_step, and a step without gradients (a graphed step's
    count) changes no parameter."""
    import torch

    seen: list[int] = []

    class Hooked(lightning.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            seen.append(trainer.global_step)

    class Manual(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            optimizer = self.optimizers()
            for _ in range(2):
                optimizer.zero_grad()
                self.manual_backward(self.layer(batch).sum())
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            before = [p.detach().clone() for p in self.parameters()]
            optimizer.step()  # no gradients: counted, nothing updated
            assert all(torch.equal(a, p) for a, p in zip(before, self.parameters(), strict=True))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(torch.ones(4, 1))

    trainer = lightning.Trainer(
        max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", callbacks=[Hooked()],
    )  # fmt: skip
    trainer.fit(Manual())
    assert trainer.global_step == 6, f"{VERSION} counts manual optimization steps elsewhere"
    assert seen == list(range(6)), f"{VERSION} calls on_before_optimizer_step otherwise: {seen}"
