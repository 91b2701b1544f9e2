"""Which checkpoint a run continues from, and ``reslab-resume RUN_FOLDER``'s command. A
checkpoint holds the random number generators and the data order is a function of the
iteration, so training on from iteration k repeats what the interrupted run did after k."""

import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig

from reslab.checkpoints import check_ckpt_path, verify_checkpoint
from reslab.config import CONFIG_DIR, CONFIG_NAME, instantiate
from reslab.run_folder import LAST_CHECKPOINT, OVERRIDES_FILE, read_status
from reslab.sweeps import first_start, hydra_quoted

TRAIN_MODULE = "reslab.cli"  # the module `python -m` runs for reslab-train
HYDRA_FILE = ".hydra/hydra.yaml"  # Hydra's own config of the run: how it was started
# hydra.* overrides of the first start only (a resume sets its folder; a sweep's job is a run)
RUN_ONLY = ("hydra.run.dir", "hydra.mode", "hydra.sweep", "hydra/sweeper", "hydra/launcher",
            "hydra.launcher", "hydra.sweeper")  # fmt: skip


def resume_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """What a run in ``run_dir`` continues from (:func:`reslab.checkpoints.check_ckpt_path`'s,
    raising as it does), or None for a start at iteration 0: ``ckpt_path=last`` (or none in a
    requeued SLURM job) is the folder's own ``checkpoints/last.ckpt``, when it has one."""
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    if ckpt_path is None and not requeued:
        return None
    if ckpt_path in (None, "last"):
        last = run_dir / LAST_CHECKPOINT
        if not last.is_file():  # stopped before its first checkpoint, or never started
            if ckpt_path == "last" and read_status(run_dir):
                print(f"[reslab] {run_dir} has no {LAST_CHECKPOINT}: it starts again at "
                      "iteration 0", flush=True)  # fmt: skip
            return None
        ckpt_path = str(last)
    return check_ckpt_path(ckpt_path)


def check_network(
    checkpoint: dict[str, Any], checkpoint_path: str, cfg: DictConfig, datamodule: Any
) -> None:
    """Refuses (``ValueError``, before the run folder changes) a checkpoint of another network
    than ``cfg``'s for ``datamodule`` (set up: its class count and channels): one whose run
    folder's status.json names another network, or whose parameters and buffers differ from
    ``cfg.model``'s (built on the meta device) in name or shape, the classifier's too."""
    folder = Path(checkpoint_path).parent.parent  # <run folder>/checkpoints/<file>.ckpt
    trained = read_status(folder).get("name")
    with torch.device("meta"):
        net = instantiate(
            cfg.model, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels
        )
    expected = {f"net.{k}": tuple(v.shape) for k, v in net.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    differ = sorted(set(expected) ^ set(saved)) or [k for k in expected if expected[k] != saved[k]]
    if differ or (trained is not None and trained != cfg.name):
        what = f"{trained}'s" if trained and trained != cfg.name else "another network's"
        first = differ[0] if differ else None
        shapes = f" ({first}: {saved.get(first)} in it, {expected.get(first)} in {cfg.name})"
        raise ValueError(
            f"{checkpoint_path} holds {what} weights, not {cfg.name}'s"
            f"{shapes if differ else ''}: resume with the model.depth, shortcut, "
            "model.widths and data (its classes and channels) it was trained with, or start a "
            "new run (ckpt_path=null)"
        )


def run_complete(run_dir: Path, max_steps: int) -> str | None:
    """What to say when the run in ``run_dir`` has finished at ``max_steps`` iterations or
    more (resuming would only redo its end); None when there is training to do."""
    status = read_status(run_dir)
    iterations = status.get("iterations")
    if status.get("status") != "finished" or not isinstance(iterations, int):
        return None
    if max_steps < 0 or max_steps > iterations or not (run_dir / LAST_CHECKPOINT).is_file():
        return None
    return (
        f"{run_dir} is complete: it finished at iteration {iterations} and "
        f"optim.max_steps={max_steps} asks for no more; nothing to do (a higher "
        "optim.max_steps extends it)"
    )


def resume_command(run_dir: str | Path, extra: list[str] | None = None) -> tuple[list, Path]:
    """The ``reslab-train`` command resuming the run in ``run_dir``, and the folder to run it in:
    the first start's (:func:`first_start`), then ``extra``, ``ckpt_path=last``, as one run in
    that folder; FileNotFoundError (no run folder) or DamagedCheckpointError before Hydra writes."""
    run_dir = Path(run_dir).expanduser().absolute()
    if not (run_dir / OVERRIDES_FILE).is_file():
        why = f"it has no {OVERRIDES_FILE}"
        if not run_dir.is_dir():
            why = "it is not a folder" if run_dir.exists() else "it does not exist"
        raise FileNotFoundError(
            f"{run_dir} is not a reslab run folder: {why} (a run folder is one that "
            "reslab-train made, under outputs/runs/ or outputs/multiruns/)"
        )
    if (run_dir / LAST_CHECKPOINT).is_file():  # else it starts again at iteration 0
        verify_checkpoint(run_dir / LAST_CHECKPOINT)
    config_dir, hydra_overrides, cwd = first_start(run_dir / HYDRA_FILE, RUN_ONLY)
    command = [
        sys.executable, "-m", TRAIN_MODULE, *config_dir, *hydra_overrides,
        *_run_overrides(run_dir, extra), f"hydra.run.dir={hydra_quoted(run_dir)}", "ckpt_path=last",
        "hydra.mode=RUN",  # one run, also for a trial of a search (hparams_search sets MULTIRUN)
    ]  # fmt: skip
    return command, cwd


def resume_done(run_dir: str | Path, extra: list[str] | None = None) -> str | None:
    """:func:`run_complete` for the run in ``run_dir`` with its overrides and ``extra``
    (the config composed as at its first start, for its ``trainer.max_steps``)."""
    from hydra import compose, initialize_config_dir

    run_dir = Path(run_dir).expanduser().absolute()
    config_dir, _, _ = first_start(run_dir / HYDRA_FILE, RUN_ONLY)
    search = [f"hydra.searchpath=[file://{d.split('=', 1)[1]}]" for d in config_dir]
    own = [o for o in _run_overrides(run_dir, extra) if not o.lstrip("+~").startswith("hydra")]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=[*own, *search])
    return run_complete(run_dir, int(cfg.trainer.max_steps))


def _run_overrides(run_dir: Path, extra: list[str] | None) -> list[str]:
    """The run's overrides (``.hydra/overrides.yaml``) but its ``ckpt_path``, then ``extra``."""
    overrides = yaml.safe_load((run_dir / OVERRIDES_FILE).read_text()) or []
    return [*(o for o in overrides if not o.startswith("ckpt_path=")), *(extra or [])]
