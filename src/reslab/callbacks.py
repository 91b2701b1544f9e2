"""Lightning callbacks of the project: the layer responses of the paper's Figure 7, a progress
bar that counts iterations, and the divergence guard."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.hooks import RemovableHandle

from reslab.module import logging_iteration
from reslab.run_folder import RESPONSES_FILE, atomic_write
from reslab.validation import require_int

RESPONSE_COLUMNS = ("step", "split", "index", "layer", "std")


def response_layers(net: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BN after every 3×3 conv layer of ``net``, in network order, with its module name.

    A 3×3 layer's BN is the module registered right after its conv (leaf modules in
    ``named_modules()`` order): ``conv1, bn1, conv2, bn2`` in a block, ``Conv2d, BatchNorm2d``
    in the CIFAR stem. Other kernels (1×1 projections and bottleneck layers, the 7×7 ImageNet
    stem) are not 3×3 layers. A 3×3 conv with no BN right after it is an error, not a gap.
    """
    leaves = [(name, m) for name, m in net.named_modules() if not any(m.children())]
    layers = []
    for i, (name, module) in enumerate(leaves):
        if not (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)):
            continue
        after = leaves[i + 1] if i + 1 < len(leaves) else None
        if after is None or not isinstance(after[1], nn.BatchNorm2d):
            following = f"{after[0]!r} ({type(after[1]).__name__})" if after else "nothing"
            raise ValueError(
                f"3×3 conv {name!r} is followed by {following}, not a BatchNorm2d: Figure 7 "
                "measures the response after each 3×3 layer's BN"
            )
        layers.append(after)
    return layers


class LayerResponses(L.Callback):
    """Figure 7: the standard deviation of the response of every 3×3 layer.

    The response of a 3×3 layer is the output of its BN, before the ReLU or the addition (see
    :func:`response_layers`). Its standard deviation is the population std (divisor N, not
    N - 1) over all N values of the response: every image × channel × position of the whole
    evaluation set, pooled across DDP ranks. Per layer, N, Σx and Σx² accumulate in float64 on
    the device (each batch adds its per-channel ``var_mean`` in float32, combined exactly), and
    std = sqrt(Σx²/N - (Σx/N)²).

    Measured during ``trainer.test`` on the test set (at the end of training, as train.py
    always tests after fit), and with ``every_n_steps`` also during each validation whose
    ``global_step`` is a multiple of it, on the validation set. No extra pass over the data:
    forward hooks ride along the evaluation batches (eval mode, mean-subtracted images; 10-crop
    batches count as more images).

    Each measurement appends rows ``step,split,index,layer,std`` (index 1..L in network order,
    layer = the BN's module name in ``pl_module.net``) to ``<trainer.default_root_dir>/
    <filename>`` (rank zero, atomically), logs ``responses/<split>/mean_std``, ``.../max_std``
    and ``.../min_std`` to every logger at the iteration, and a wandb Table ``responses`` with
    the same columns to a ``WandbLogger``. ``last`` holds the latest (index, layer, std) rows.

    Args:
        every_n_steps: also measure on the validation runs at multiples of this many
            iterations; None measures only on the test set.
        filename: the CSV file in the run folder.
    """

    def __init__(self, every_n_steps: int | None = None, filename: str = RESPONSES_FILE) -> None:
        require_int("every_n_steps", every_n_steps, 1, optional=True, note="(iterations)")
        if (
            not isinstance(filename, str)
            or not filename.endswith(".csv")
            or Path(filename).name != filename
        ):
            raise ValueError(
                f"filename must be a plain file name ending in .csv (it is written in the run "
                f"folder), e.g. 'responses.csv'; got {filename!r}"
            )
        self.every_n_steps = every_n_steps
        self.filename = filename
        self.last: list[tuple[int, str, float]] = []
        self._layers: list[tuple[str, nn.BatchNorm2d]] = []
        self._handles: list[RemovableHandle] = []
        self._sums: torch.Tensor | None = None  # (L, 3) float64: N, Σx, Σx² per layer

    # --- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = getattr(pl_module, "net", None)
        if not isinstance(net, nn.Module):
            raise ValueError(
                f"LayerResponses measures `pl_module.net`, but {type(pl_module).__name__} has no "
                "`net` module; use reslab.module.Classifier or give the module a `net`"
            )
        self._layers = response_layers(net)  # a bad network fails here, before training
        interval = trainer.val_check_interval
        if (
            stage == "fit"
            and self.every_n_steps is not None
            and isinstance(interval, int)
            and self.every_n_steps % interval
        ):
            rank_zero_warn(
                f"LayerResponses(every_n_steps={self.every_n_steps}) is not a multiple of "
                f"trainer.val_check_interval={interval}: responses are measured only at "
                f"validations on multiples of {math.lcm(self.every_n_steps, interval)} iterations"
            )

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (
            self.every_n_steps is not None
            and not trainer.sanity_checking
            and trainer.global_step % self.every_n_steps == 0
        ):
            self._start(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handles:
            self._finish(trainer, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, "test")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._remove_hooks()

    # --- measuring -----------------------------------------------------------------------------
    def _start(self, pl_module: L.LightningModule) -> None:
        self._remove_hooks()
        sums = torch.zeros(len(self._layers), 3, dtype=torch.float64, device=pl_module.device)
        self._sums = sums

        def accumulate(index: int) -> Any:
            def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
                x = output.detach()
                if x.dtype not in (torch.float32, torch.float64):
                    x = x.float()  # half precision would lose the small differences
                # Per channel in the batch's precision, without a float64 copy of the batch.
                var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
                n = x.numel() // x.shape[1]  # values per channel
                var, mean = var.double(), mean.double()
                sums[index, 0] += x.numel()
                sums[index, 1] += n * mean.sum()
                sums[index, 2] += n * (var + mean**2).sum()

            return hook

        self._handles = [
            bn.register_forward_hook(accumulate(i)) for i, (_, bn) in enumerate(self._layers)
        ]

    def _finish(self, trainer: L.Trainer, split: str) -> None:
        self._remove_hooks()
        assert self._sums is not None
        sums = trainer.strategy.reduce(self._sums, reduce_op="sum")
        self._sums = None
        count, total, squares = sums.unbind(1)
        if not bool((count > 0).all()):  # one host sync per measurement, not per batch
            rank_zero_warn(f"LayerResponses: no {split} batches ran; nothing measured")
            return
        mean = total / count
        std = (squares / count - mean**2).clamp_min(0).sqrt().tolist()
        names = [name for name, _ in self._layers]
        self.last = list(zip(range(1, len(std) + 1), names, std, strict=True))
        step = trainer.global_step
        if trainer.is_global_zero:
            self._append_csv(Path(trainer.default_root_dir), step, split)
        scalars = {
            f"responses/{split}/mean_std": sum(std) / len(std),
            f"responses/{split}/max_std": max(std),
            f"responses/{split}/min_std": min(std),
        }
        rows = [[step, split, index, name, s] for index, name, s in self.last]
        for logger in trainer.loggers:  # rank-zero-only methods: the other ranks do nothing
            logger.log_metrics(scalars, step=step)
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key="responses", columns=list(RESPONSE_COLUMNS), data=rows, step=step
                )

    def _append_csv(self, folder: Path, step: int, split: str) -> None:
        """Appends this measurement to the CSV, written whole to a temporary file and renamed,
        so a reader never sees half of it; the header only when the file is new."""
        path = folder / self.filename
        old = path.read_text() if path.is_file() else ""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if not old:
            writer.writerow(RESPONSE_COLUMNS)
        writer.writerows((step, split, index, name, repr(s)) for index, name, s in self.last)
        atomic_write(path, old + buffer.getvalue())

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class IterationProgressBar(RichProgressBar):
    """A rich progress bar over the run's iterations (``trainer.max_steps``), not its epochs:
    reslab trains for a number of iterations, so one bar runs from 0 to max_steps across epoch
    boundaries (Lightning's own bar restarts every epoch and shows ``Epoch 3/-2``). It shows
    the logged metrics, without Lightning's ``v_num``."""

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'Iterations':{len(self.validation_description)}}"

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: a run id that says nothing here
        return metrics

    @property
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps is not None and max_steps > 0 else super().total_train_batches

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_disabled:
            return
        if self.progress is not None and self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(
                self.total_train_batches, self._get_train_description(trainer.current_epoch)
            )
        self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed in the middle of an epoch
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


class DivergenceGuard(L.Callback):
    """Stops a run whose training loss has become NaN or infinite.

    At every logging iteration (``trainer.log_every_n_steps``, and the last) it reads
    ``train/loss``, the mean over the interval, so a non-finite loss anywhere in the interval
    shows; one host read per interval, none in between. On every DDP rank at once, it then
    stops the training, records ``diverged_at`` (the iteration) and says so; train.py marks the
    run ``diverged`` (status.json, the wandb summary) and skips the final evaluations.
    """

    def __init__(self, monitor: str = "train/loss") -> None:
        self.monitor = monitor
        self.diverged_at: int | None = None
        self.value: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"diverged_at": self.diverged_at, "value": self.value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.diverged_at = state_dict.get("diverged_at", self.diverged_at)
        self.value = state_dict.get("value", self.value)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if not logging_iteration(trainer, step):
            return
        value = trainer.callback_metrics.get(self.monitor)
        bad = value is not None and not math.isfinite(float(value))
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        self.diverged_at, self.value = step, float(value) if value is not None else math.nan
        trainer.should_stop = True
        rank_zero_warn(
            f"[reslab] diverged: {self.monitor} is {self.value} at iteration {step}; stopping "
            "this run (a lower optim.lr may help)"
        )
