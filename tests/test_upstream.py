"""The private names of other libraries that reslab still uses, one place each, because no public
way does the same. Each test fails with a message that says which upstream name changed and
which reslab piece needs a new way; the rest of reslab uses public APIs only.

- Lightning's ``_SubprocessScriptLauncher`` (reslab.launch.reruns_command_line): which DDP
  strategies start their ranks by running the command line again.
- submitit's class attribute ``SlurmJob.watcher`` and its watcher's ``_delay_s`` and
  ``_registered`` (reslab.slurm.quiet_slurm_polling): a SLURM sweep on a cluster without
  accounting asks squeue for its jobs' states instead of sacct's errors on every poll.
- numpy's ``numpy.core.multiarray._reconstruct`` (``numpy._core`` in numpy 2), by name only
  (reslab.data.cifar's restricted unpickler): the one function a pickled CIFAR array calls, the
  only global besides ndarray and dtype that it lets a pickle name.

Named, not used: Hydra's basic sweeper's ``_target_`` as multirun.yaml records it
(reslab.sweeps.BASIC_SWEEPER: a sweep of it can be finished job by job, a search cannot), and
``reslab.sweeps.expand``, which numbers a sweep's jobs as ``BasicSweeper.split_arguments`` does.

Not in src, in the tests only: wandb's ``wandb.proto.wandb_internal_pb2.Record`` and the layout of
its ``.wandb`` files (tests/wandb_files.py), to read back what a run gave wandb.

The wording of other libraries' errors that reslab.cli still reads (no attribute
holds what they say) is pinned here too: Hydra's bad override and failed instantiation, torch's
refusal of an unsafe checkpoint, a DataLoader worker's error; and Lightning's fit-time refusal of
a Trainer setting, whose backticks reslab.checks.named_setting reads for the key to name.
"""

from __future__ import annotations

import itertools
import pickle
import pickletools
import re
from pathlib import Path

import lightning
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


def test_numpy_arrays_pickle_through_the_global_the_cifar_unpickler_allows() -> None:
    from reslab.data.cifar import _ALLOWED_GLOBALS

    for protocol in (2, 4):  # the CIFAR files: protocol 2, from Python 2
        ops = list(pickletools.genops(pickle.dumps(np.zeros((2, 3), np.uint8), protocol)))
        strings = [arg for op, arg, _ in ops if isinstance(arg, str)]
        named = {tuple(arg.split(" ", 1)) for op, arg, _ in ops if op.name == "GLOBAL"}
        named |= set(itertools.pairwise(strings))
        assert named & {g for g in _ALLOWED_GLOBALS if g[1] == "_reconstruct"}, (
            f"numpy {np.__version__} pickles arrays through another function at protocol "
            f"{protocol} ({sorted(named)}): update reslab.data.cifar's _ALLOWED_GLOBALS"
        )


_KEYS = ("seed", "model.depth", "+extra", "optim.lr", "net")
_VALUES = ("0", "1", "20", "0.1", "plain-20", "resnet-56A")


@given(
    st.lists(
        st.tuples(st.sampled_from(_KEYS), st.lists(st.sampled_from(_VALUES), min_size=1,
                                                    max_size=3, unique=True)),
        min_size=1, max_size=6,
    )
)  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_reslab_expands_a_sweep_as_hydras_basic_sweeper_numbers_its_jobs(overrides) -> None:
    """reslab.sweeps.expand (reslab-resume SWEEP_FOLDER finds each job's number by it) against
    Hydra's own ``BasicSweeper.split_arguments`` (private), for generated command lines:
    comma lists, single values, a key given again (it keeps its first place, its last value)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from reslab.sweeps import expand

    lines = [f"{key}={','.join(values)}" for key, values in overrides]
    parser = OverridesParser.create()
    (hydras,) = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    assert expand(parser, lines) == hydras


def test_hydras_basic_sweeper_is_the_target_multirun_yaml_records() -> None:
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    from reslab.sweeps import BASIC_SWEEPER

    names = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    assert BASIC_SWEEPER in names, f"Hydra's basic sweeper is no longer {BASIC_SWEEPER}: {names}"


def test_lightning_names_the_trainer_setting_it_refuses_at_fit_in_backticks(tmp_path: Path) -> None:
    from lightning.pytorch.demos.boring_classes import BoringModel
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    trainer = lightning.Trainer(
        max_steps=1, limit_val_batches=0.01, default_root_dir=tmp_path, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(MisconfigurationException) as refused:
        trainer.fit(BoringModel())
    named = set(re.findall(r"`(\w+)(?:=[^`]*)?`", str(refused.value)))
    assert "limit_val_batches" in named, (
        f"{VERSION} no longer names `limit_val_batches` in backticks when it refuses it at fit "
        f"({refused.value}); reslab.checks.named_setting reads that to name the user's key"
    )
