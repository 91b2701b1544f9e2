"""Which checkpoint a run continues from, and ``reslab-resume RUN_FOLDER``'s command. A
checkpoint holds the random number generators and the data order is a function of the
iteration, so training on from iteration k repeats what the interrupted run did after k."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from reslab.checkpoints import check_ckpt_path, verify_checkpoint
from reslab.config import CONFIG_DIR, CONFIG_NAME
from reslab.run_folder import LAST_CHECKPOINT, OVERRIDES_FILE, read_status

TRAIN_MODULE = "reslab.cli"  # the module `python -m` runs for reslab-train


def resume_checkpoint(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint file a run in ``run_dir`` continues from, or None for a fresh start:
    ``ckpt_path=last`` (or none in a requeued SLURM job, once it has one) is the folder's own
    ``checkpoints/last.ckpt``. Raises as :func:`reslab.checkpoints.check_ckpt_path` does."""
    requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    if ckpt_path is None and not requeued:
        return None
    if ckpt_path is None or ckpt_path == "last":
        last = run_dir / LAST_CHECKPOINT
        if last.is_file():
            ckpt_path = str(last)
        elif ckpt_path == "last":
            raise FileNotFoundError(
                f"ckpt_path=last: the run folder {run_dir} has no {LAST_CHECKPOINT} to resume "
                "from; set hydra.run.dir to the folder of the run to resume (or use "
                "reslab-resume RUN_FOLDER), or name a checkpoint file"
            )
        else:
            return None  # requeued before its first checkpoint
    check_ckpt_path(ckpt_path)
    return str(ckpt_path)


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


def resume_command(run_dir: str | Path, extra: list[str] | None = None) -> list[str]:
    """The ``reslab-train`` command that resumes the run in ``run_dir``: its own overrides,
    then ``extra``, in that folder, ``ckpt_path=last``. FileNotFoundError or
    DamagedCheckpointError when it cannot, before Hydra writes anything."""
    run_dir = Path(run_dir).expanduser().absolute()
    if not (run_dir / OVERRIDES_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a reslab run folder: it has no {OVERRIDES_FILE} (a run "
            "folder is one that reslab-train made, under outputs/runs/ or outputs/multiruns/)"
        )
    if not (run_dir / LAST_CHECKPOINT).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {LAST_CHECKPOINT} to resume from (it stopped before its "
            "first checkpoint: callbacks.checkpoint.every_n_train_steps); start it again instead"
        )
    verify_checkpoint(run_dir / LAST_CHECKPOINT)
    return [
        sys.executable, "-m", TRAIN_MODULE, *_run_overrides(run_dir), *(extra or []),
        f'hydra.run.dir="{run_dir}"', "ckpt_path=last",
    ]  # fmt: skip


def resume_done(run_dir: str | Path, extra: list[str] | None = None) -> str | None:
    """:func:`run_complete` for the run in ``run_dir`` with its overrides and ``extra``
    (the config composed without Hydra's own settings, for its ``trainer.max_steps``)."""
    from hydra import compose, initialize_config_dir

    run_dir = Path(run_dir).expanduser().absolute()
    overrides = [
        o for o in [*_run_overrides(run_dir), *(extra or [])]
        if not o.lstrip("+~").startswith("hydra")
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=CONFIG_NAME, overrides=overrides)
    return run_complete(run_dir, int(cfg.trainer.max_steps))


def _run_overrides(run_dir: Path) -> list[str]:
    """The run's own overrides (``.hydra/overrides.yaml``), without the checkpoint it named."""
    overrides = yaml.safe_load((run_dir / OVERRIDES_FILE).read_text()) or []
    return [o for o in overrides if not o.startswith("ckpt_path=")]
