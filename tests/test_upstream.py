"""The private names of other libraries that reslab still uses, one place each, because no public
way does the same. Each test fails with a message that says which upstream name changed and
which reslab piece needs a new way; the rest of reslab uses public APIs only.

- Lightning's ``_SubprocessScriptLauncher`` (reslab.launch.reruns_command_line): which DDP
  strategies start their ranks by running the command line again.
- Lightning's ``_ManualOptimization.optim_step_progress`` (``trainer.fit_loop.epoch_loop.
  manual_optimization``; reslab.module: fused iterations): the counter ``trainer.global_step``
  reads under manual optimization, which a fused step advances once per iteration without
  Lightning's per-iteration hooks.
- submitit's class attribute ``SlurmJob.watcher`` and its watcher's ``_delay_s`` and
  ``_registered`` (reslab.slurm.quiet_slurm_polling): a SLURM sweep on a cluster without
  accounting asks squeue for its jobs' states instead of sacct's errors on every poll.

Not in src, in the tests only: wandb's ``wandb.proto.wandb_internal_pb2.Record`` and the layout of
its ``.wandb`` files (tests/wandb_files.py), to read back what a run gave wandb.

The wording of other libraries' errors that reslab.cli still reads (no attribute
holds what they say) is pinned here too: Hydra's bad override and failed instantiation, torch's
refusal of an unsafe checkpoint, a DataLoader worker's error.
"""

from __future__ import annotations

from pathlib import Path

import lightning
import pytest
from omegaconf import OmegaConf

from reslab import cli
from reslab.launch import quiet_trainer, reruns_command_line

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


def test_wandb_run_files_hold_records_that_the_tests_read_back(tmp_path: Path) -> None:
    import wandb
    from wandb_files import offline_runs, wandb_history

    run = wandb.init(dir=str(tmp_path), mode="offline", project="reslab")
    run.log({"train/loss": 2.5}, step=3)
    run.finish()
    (piece,) = offline_runs(tmp_path)
    try:
        rows = wandb_history(piece / f"run-{run.id}.wandb")
    except Exception as err:  # pragma: no cover - only when wandb changes its files
        pytest.fail(f"wandb {wandb.__version__}'s .wandb files: {err!r}; fix tests/wandb_files.py")
    assert [(r["_step"], r["train/loss"]) for r in rows] == [(3, 2.5)], (
        f"wandb {wandb.__version__} writes its history differently: fix tests/wandb_files.py"
    )


def _hydra_says(pattern: object, text: str, user: str) -> None:
    import hydra

    assert pattern.search(text), (
        f"hydra {hydra.__version__} words its error differently now ({text!r}); {user} reads "
        f"{pattern.pattern!r} in it: find the new wording there"
    )


def test_hydra_says_which_override_it_could_not_apply() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from reslab.config import CONFIG_DIR, CONFIG_NAME, register_resolvers

    register_resolvers()
    config_dir = initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3")
    with config_dir, pytest.raises(ConfigCompositionException) as caught:
        compose(CONFIG_NAME, overrides=["modle.depth=20"])
    _hydra_says(cli._OVERRIDE, str(caught.value), "reslab.cli._explain_override")
    assert cli._OVERRIDE.search(str(caught.value)).group(1) == "modle.depth"
    assert cli.explain(caught.value).startswith("unknown config key 'modle' (in modle.depth=...)")


def test_hydra_names_the_key_and_the_target_it_could_not_instantiate() -> None:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    config = OmegaConf.create({"module": {"optimizer": {"_target_": "torch.optim.SGD"}}})
    with pytest.raises(InstantiationException) as caught:
        instantiate(config.module)
    text = str(caught.value)
    for pattern in (cli._FULL_KEY, cli._TARGET):
        _hydra_says(pattern, text, "reslab.cli._explain_instantiation")
    assert cli.explain(caught.value).startswith("module.optimizer (torch.optim.sgd.SGD): TypeError")


def test_torch_names_the_global_that_makes_a_checkpoint_unsafe(tmp_path: Path) -> None:
    import argparse
    import pickle

    import torch

    torch.save({"args": argparse.Namespace(lr=0.1)}, tmp_path / "unsafe.ckpt")
    with pytest.raises(pickle.UnpicklingError) as caught:
        torch.load(tmp_path / "unsafe.ckpt", weights_only=True)
    text = str(caught.value)
    assert cli._WEIGHTS_ONLY in text and cli._UNSAFE_GLOBAL.search(text), (
        f"torch {torch.__version__} words an unsafe checkpoint differently ({text[:300]!r}): "
        "reslab.cli._explain_unpickling reads it; find the new wording there"
    )
    assert cli.explain(caught.value) == (
        "a checkpoint is not safe to load: it refers to argparse.Namespace; refusing to load it"
    )


class _BadImages:
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> None:
        raise ValueError(f"cannot decode image 'n01443537/notes.JPEG' ({index})")


def test_a_dataloader_worker_error_carries_the_workers_traceback() -> None:
    import torch
    from torch.utils.data import DataLoader

    with pytest.raises(ValueError) as caught:
        next(iter(DataLoader(_BadImages(), num_workers=1)))
    text = str(caught.value)
    assert cli._WORKER_TRACEBACK in text, (
        f"torch {torch.__version__} words a DataLoader worker's error differently ({text!r}): "
        "reslab.cli._worker_error reads it; find the new wording there"
    )
    assert cli.explain(caught.value) == "cannot decode image 'n01443537/notes.JPEG' (0)"


def test_submitit_slurm_jobs_share_a_watcher_reslab_can_replace() -> None:
    from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

    user = "reslab.slurm.quiet_slurm_polling"
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


def test_manual_optimization_counts_its_steps_where_fused_iterations_count_them() -> None:
    """reslab.module._optimizer_steps advances the counter that trainer.global_step reads."""
    import torch

    from reslab.module import _optimizer_steps

    class Manual(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: object, batch_idx: int) -> None:
            steps = _optimizer_steps(self.trainer)
            for _ in range(3):
                steps.increment_ready()
                steps.increment_completed()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self) -> list:
            return [torch.zeros(1)] * 4

    trainer = lightning.Trainer(
        max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    try:
        trainer.fit(Manual())
    except AttributeError as err:  # pragma: no cover - only when Lightning moves it
        pytest.fail(f"{VERSION}: {err}; reslab.module._optimizer_steps needs a new way")
    assert trainer.global_step == 6, f"{VERSION} counts manual optimization steps elsewhere"
