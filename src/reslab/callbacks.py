"""Lightning callbacks of the project: the layer responses of the paper's Figure 7, a progress
bar that counts iterations, and the divergence guard."""

import csv
import functools
import io
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.hooks import RemovableHandle

from reslab.checkpoints import finite_weights
from reslab.module import logging_iteration
from reslab.run_folder import RESPONSES_FILE, atomic_write
from reslab.validation import require_int

RESPONSE_COLUMNS = ("step", "split", "index", "layer", "std")


def response_layers(net: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """(name, BN) after every 3×3 conv of ``net`` (the leaf module registered right after it), in
    network order; a 3×3 conv with no BN right after it is a ValueError."""
    leaves = [(name, m) for name, m in net.named_modules() if not any(m.children())]
    layers = []
    for (name, module), after in zip(leaves, [*leaves[1:], None], strict=True):
        if not (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)):
            continue
        if after is None or not isinstance(after[1], nn.BatchNorm2d):
            following = f"{after[0]!r} ({type(after[1]).__name__})" if after else "nothing"
            raise ValueError(
                f"3×3 conv {name!r} is followed by {following}, not a BatchNorm2d: Figure 7 "
                "measures the response after each 3×3 layer's BN"
            )
        layers.append(after)
    return layers


class LayerResponses(L.Callback):
    """Figure 7: the std of every 3×3 layer's response (its BN's output) over every image ×
    channel × position of the test set (with ``every_n_steps``, of the val set at validations on
    its multiples too), pooled over DDP ranks. Each measurement appends ``step,split,index,layer,
    std`` rows to the run folder's ``filename``, logs ``responses/<split>/{mean,max,min}_std``
    and a wandb Table; ``last`` holds its (index, layer, std) rows."""

    def __init__(self, every_n_steps: int | None = None, filename: str = RESPONSES_FILE) -> None:
        require_int("every_n_steps", every_n_steps, 1, optional=True, note="(iterations)")
        if not isinstance(filename, str) or not filename.endswith(".csv") or "/" in filename:
            raise ValueError(
                f"filename must be a plain file name ending in .csv (it is written in the run "
                f"folder), e.g. 'responses.csv'; got {filename!r}"
            )
        self.every_n_steps, self.filename = every_n_steps, filename
        self.last: list[tuple[int, str, float]] = []
        self._layers: list[tuple[str, nn.BatchNorm2d]] = []
        self._handles: list[RemovableHandle] = []
        self._sums: torch.Tensor | None = None  # (L, 3) float64: N, Σx, Σx² per layer

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._layers = response_layers(pl_module.net)  # a bad network fails here, before training
        interval, every = trainer.val_check_interval, self.every_n_steps
        if isinstance(interval, int):  # Lightning's steps: iterations_per_step iterations each
            interval *= getattr(pl_module, "iterations_per_step", 1)
        if stage == "fit" and every is not None and isinstance(interval, int) and every % interval:
            rank_zero_warn(
                f"LayerResponses(every_n_steps={every}) is not a multiple of "
                f"trainer.val_check_interval={interval}: responses are measured only at "
                f"validations on multiples of {math.lcm(every, interval)} iterations"
            )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = self.every_n_steps
        if every is not None and not trainer.sanity_checking and trainer.global_step % every == 0:
            self._start(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handles:
            self._finish(trainer, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "test")

    def _start(self, pl_module: L.LightningModule) -> None:
        self._remove_hooks()
        self._sums = torch.zeros(len(self._layers), 3, dtype=torch.float64, device=pl_module.device)
        self._handles = [
            bn.register_forward_hook(functools.partial(self._accumulate, i))
            for i, (_, bn) in enumerate(self._layers)
        ]

    def _accumulate(self, index: int, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        # at least fp32 (half precision would lose the small differences); per channel, without
        # a float64 copy of the batch
        x = output.detach().to(torch.promote_types(output.dtype, torch.float32))
        var, mean = (t.double() for t in torch.var_mean(x, dim=(0, 2, 3), correction=0))
        n = x.numel() // x.shape[1]  # values per channel
        self._sums[index, 0] += x.numel()
        self._sums[index, 1] += n * mean.sum()
        self._sums[index, 2] += n * (var + mean**2).sum()

    def _finish(self, trainer: L.Trainer, split: str) -> None:
        self._remove_hooks()
        count, total, squares = trainer.strategy.reduce(self._sums, reduce_op="sum").unbind(1)
        self._sums = None
        if not bool((count > 0).all()):  # one host sync per measurement, not per batch
            rank_zero_warn(f"LayerResponses: no {split} batches ran; nothing measured")
            return
        std = (squares / count - (total / count) ** 2).clamp_min(0).sqrt().tolist()
        layers = zip(self._layers, std, strict=True)
        self.last = [(index, name, s) for index, ((name, _), s) in enumerate(layers, 1)]
        step = trainer.global_step
        rows = [[step, split, index, name, s] for index, name, s in self.last]
        if trainer.is_global_zero:  # appended atomically, the header first in a new file
            path = Path(trainer.default_root_dir) / self.filename
            old = path.read_text() if path.is_file() else ""
            text = io.StringIO()
            header = [] if old else [RESPONSE_COLUMNS]
            csv.writer(text, lineterminator="\n").writerows([*header, *rows])
            atomic_write(path, old + text.getvalue())
        scalars = {
            f"responses/{split}/mean_std": sum(std) / len(std),
            f"responses/{split}/max_std": max(std),
            f"responses/{split}/min_std": min(std),
        }
        for logger in trainer.loggers:  # rank-zero-only methods: the other ranks do nothing
            logger.log_metrics(scalars, step=step)
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key="responses", columns=list(RESPONSE_COLUMNS), data=rows, step=step
                )

    def _remove_hooks(self, *_: Any, **__: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    teardown = on_exception = _remove_hooks  # (after a failure too)


class IterationProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar over the run's iterations (0 to ``trainer.max_steps`` across epochs;
    Lightning's restarts every epoch), named ``Iterations``, without Lightning's ``v_num``."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if trainer.max_steps > 0 and bar.total != trainer.max_steps:  # this process's first
            bar.reset(total=trainer.max_steps)
            bar.set_description("Iterations")
            bar.update(trainer.global_step)  # a resumed run's iterations done

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        step, bar = trainer.global_step, self.train_progress_bar
        if bar.disable or (step % max(self.refresh_rate, 1) and step != trainer.max_steps):
            return  # (the metrics are read only where they are shown)
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module))  # and redraws

    def get_metrics(self, *args: Any) -> dict[str, Any]:
        metrics = super().get_metrics(*args)
        metrics.pop("v_num", None)  # the logger's version: a run id that says nothing here
        return metrics


class Diverged(Exception):
    """Raised by :class:`DivergenceGuard` where Lightning would validate a diverged network (it
    validates a run that stops): train.py's fit ends there, and nothing more is evaluated."""


class DivergenceGuard(L.Callback):
    """Stops a run whose ``train/loss`` (the logging interval's mean: one host read an interval)
    has become NaN or infinite, on every DDP rank at once, and records ``diverged_at``; that
    iteration's rows are logged, no validation runs (:class:`Diverged`), train.py marks the run
    ``diverged`` and skips the final evaluations."""

    def __init__(self, monitor: str = "train/loss") -> None:
        self.monitor = monitor
        self.diverged_at: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"diverged_at": self.diverged_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.diverged_at = state_dict["diverged_at"]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # weights broken after the last logging iteration (or before the first): no result
        if self.diverged_at is None and not finite_weights(pl_module):
            self.diverged_at = trainer.global_step
            rank_zero_warn(
                f"[reslab] diverged: the network's weights are not finite at iteration "
                f"{self.diverged_at} (found at the end of training; a lower optim.lr may help)"
            )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.diverged_at is not None and trainer.state.fn == "fit":
            raise Diverged(f"diverged at iteration {self.diverged_at}")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if not logging_iteration(trainer, step):
            return
        value = trainer.callback_metrics.get(self.monitor)
        bad = value is not None and not math.isfinite(float(value))
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        self.diverged_at = step
        trainer.should_stop = True
        shown = float(value) if value is not None else math.nan  # (another rank's was bad)
        rank_zero_warn(
            f"[reslab] diverged: {self.monitor} is {shown} at iteration {step}; stopping "
            "this run (a lower optim.lr may help)"
        )
