"""The paper's warm-up for its 110- and 1202-layer CIFAR nets (section 4.2): lr 0.01 until the
training error is below 80% (about 400 iterations), then back to the schedule's lr (0.1) and
its milestones, unchanged. Configured in ``optim.warmup``."""

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from reslab.module import logging_iteration, summed_over_ranks
from reslab.validation import require_int, require_number


class PaperWarmup(L.Callback):
    """Trains a net of ``depth`` >= ``min_depth`` at ``lr`` until the mean training error of a
    ``window`` of iterations falls below ``until_train_error`` (percent); the iteration that ends
    it still runs at ``lr`` and is logged as ``warmup_ended_at``. ``lr`` or ``min_depth`` None:
    no warm-up. Set in ``on_before_optimizer_step`` (so logged as used) and the schedule's put
    back after the step (a step post-hook), the lr is never seen by the schedule. The window's
    counts (the module's ``train_wrong``) stay on the device, read once a window over all ranks,
    and travel in checkpoints."""

    def __init__(
        self, depth: int, lr: float | None = None, until_train_error: float = 80.0,
        window: int = 10, min_depth: int | None = None,
    ) -> None:  # fmt: skip
        require_number("optim.warmup.lr", lr, 0, low_open=True, optional=True)
        require_number("optim.warmup.until_train_error", until_train_error, 0, 100, low_open=True)
        require_int("optim.warmup.window", window, 1)
        require_int("optim.warmup.min_depth", min_depth, 1, optional=True)
        self.warming_up = lr is not None and min_depth is not None and depth >= min_depth
        self.lr = lr if self.warming_up else None
        self.until_train_error, self.window = until_train_error, window
        self.ended_at: int | None = None
        self._window_wrong = torch.zeros(2)  # (wrong images, images) of the current window
        self._scheduled: list[float] | None = None  # the schedule's lr, while a step runs
        self._hooks: list[Any] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "warming_up": self.warming_up,
            "ended_at": self.ended_at,
            "window_wrong": summed_over_ranks(self._window_wrong),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.warming_up, self.ended_at = state_dict["warming_up"], state_dict["ended_at"]
        self._window_wrong = state_dict["window_wrong"].cpu()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank:  # the window's counts so far are rank 0's to carry
            self._window_wrong = torch.zeros_like(self._window_wrong)
        if self.warming_up:
            self._hooks = [o.register_step_post_hook(self._put_back) for o in trainer.optimizers]

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        iteration = trainer.global_step + 1  # this step's number once it is done
        if self.warming_up:
            self._scheduled = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = self.lr
            self._count(trainer, pl_module.train_wrong, iteration)
        if self.ended_at is not None and logging_iteration(trainer, iteration):
            every = trainer.log_every_n_steps * pl_module.iterations_per_step
            if (iteration - 1) // every * every < self.ended_at <= iteration:  # in this interval
                pl_module.log("warmup_ended_at", float(self.ended_at))

    def _put_back(self, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        if self._scheduled is not None:
            for group, lr in zip(optimizer.param_groups, self._scheduled, strict=True):
                group["lr"] = lr
            self._scheduled = None

    def _count(self, trainer: L.Trainer, wrong: torch.Tensor, iteration: int) -> None:
        """Counts the batch into the window; at its end, ends the warm-up below the threshold."""
        counts = torch.stack([wrong.sum() / 100.0, wrong.new_tensor(float(wrong.numel()))])
        self._window_wrong = self._window_wrong.to(wrong.device) + counts
        if iteration % self.window:
            return
        total = trainer.strategy.reduce(self._window_wrong.clone(), reduce_op="sum")
        error = 100.0 * float(total[0]) / max(float(total[1]), 1.0)
        self._window_wrong = torch.zeros_like(self._window_wrong)
        if error < self.until_train_error:
            self.warming_up, self.ended_at = False, iteration
            rank_zero_info(
                f"[reslab] warm-up ended at iteration {iteration}: training error {error:.1f}% "
                f"< {self.until_train_error:g}%; lr back to the schedule"
            )
