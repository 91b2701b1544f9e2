"""Fused iterations: K iterations (forward, backward, optimizer step, schedule step) in one
Lightning training step, over K batches indexed and augmented together
(:class:`reslab.data.base.BatchLoader` with ``fused``), so that Lightning's loop, hooks and the
batch's preparation cost once per K iterations; with ``module.cuda_graphs`` on one CUDA device
the whole step is one CUDA graph (:class:`StepGraph`). Nothing a user sees changes:
``trainer.global_step`` counts iterations, every iteration's optimizer step runs Lightning's
``on_before_optimizer_step`` hooks, the schedule steps every iteration, and logging,
validation and checkpoints come at the same iterations as with K = 1 (given in iterations:
:func:`trainer` turns them into Lightning's steps of K, and refuses one that K does not divide).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from reslab.module import Classifier
from reslab.validation import require_int

Step = Callable[[torch.Tensor, torch.Tensor, torch.optim.Optimizer], None]


def trainer(
    fused_iterations: int = 1, checkpoint_every_n_steps: int | None = None, **kwargs: Any
) -> L.Trainer:
    """Lightning's ``Trainer(**kwargs)`` with ``log_every_n_steps`` and an integer
    ``val_check_interval`` given in iterations, turned into its training steps of
    ``fused_iterations`` each. Refuses (``ValueError``) what :func:`check_fused_iterations`
    refuses; ``checkpoint_every_n_steps`` (the checkpoint callback's interval) only for that."""
    k = fused_iterations
    intervals = {
        "trainer.log_every_n_steps": kwargs.get("log_every_n_steps"),
        "trainer.val_check_interval": kwargs.get("val_check_interval"),
        "optim.max_steps": kwargs.get("max_steps"),
        "callbacks.checkpoint.every_n_train_steps": checkpoint_every_n_steps,
    }
    check_fused_iterations(k, None, intervals)
    for key in ("log_every_n_steps", "val_check_interval"):
        if _is_int(kwargs.get(key)):  # (a validation interval may be a time or a fraction)
            kwargs[key] //= k
    built = L.Trainer(**kwargs)
    check_fused_iterations(k, None, {}, built)
    return built


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fused_iterations(
    fused: int, datamodule: Any, intervals: dict[str, Any], trainer: L.Trainer | None = None
) -> None:
    """Refuses ``module.fused_iterations=fused`` (K > 1) with a dataset whose loader cannot
    group batches (``fuses_iterations``: the in-memory ones); with intervals in iterations
    (``{key: value}``) that K does not divide, as a fused step ends only at multiples of K
    (all of them named at once); and with ``trainer``'s settings that Lightning's manual
    optimization or a fused step cannot keep: a length in epochs, gradient clipping or
    accumulation, fp16's gradient scaler. Raises ``ValueError``."""
    if fused == 1:
        return
    if datamodule is not None and not getattr(datamodule, "fuses_iterations", False):
        raise ValueError(
            f"module.fused_iterations={fused} needs an in-memory dataset (cifar10, cifar100, "
            f"fashion_mnist, synthetic); {type(datamodule).__name__} loads its batches one at "
            "a time: use module.fused_iterations=1"
        )
    bad = {k: v for k, v in intervals.items() if _is_int(v) and v > 0 and v % fused}
    if bad:
        said = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise ValueError(
            f"{said} {'is' if len(bad) == 1 else 'are'} not a multiple of "
            f"module.fused_iterations={fused}: a fused step of {fused} iterations ends only at "
            f"multiples of {fused}; valid: multiples of {fused}, or fused_iterations a divisor "
            f"of {math.gcd(*bad.values())}"
        )
    if trainer is None:
        return
    refused = []
    if trainer.max_epochs not in (None, -1):
        refused.append(
            f"trainer.max_epochs={trainer.max_epochs} (epochs of fused steps end elsewhere: "
            "train by optim.max_steps, with trainer.max_epochs=-1)"
        )
    if trainer.gradient_clip_val:
        refused.append(f"trainer.gradient_clip_val={trainer.gradient_clip_val}")
    if trainer.accumulate_grad_batches != 1:
        refused.append(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}")
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        refused.append(
            f"trainer.precision={trainer.precision} (its gradient scaler; bf16-mixed needs none)"
        )
    if refused:
        raise ValueError(
            f"module.fused_iterations={fused} cannot run with {'; '.join(refused)}: use "
            "module.fused_iterations=1 for those"
        )


class FusedClassifier(Classifier):
    """The :class:`reslab.module.Classifier` with ``fused_iterations`` (K) iterations per
    Lightning training step; K = 1 is the Classifier (Lightning's automatic optimization), K > 1
    Lightning's manual optimization, on in-memory datasets, in a Trainer built by
    :func:`trainer`.

    With ``cuda_graphs`` and without ``compile``, on one device, a step's device work (its K
    forwards, counts, backward passes and optimizer steps) is captured once in a
    :class:`StepGraph` and replayed: the host first runs the K iterations' optimizer steps
    without gradients (each counts its iteration and runs its hooks) and the schedule, and
    the graph reads each iteration's learning rate as they left it. A step replays only when
    the step before it ran every iteration at the learning rate its schedule set: while a
    callback sets its own in ``on_before_optimizer_step`` from what the iteration computed,
    the steps run eagerly. (Off CUDA the replay runs the same steps without a graph.)"""

    def __init__(self, *args: Any, fused_iterations: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        require_int("module.fused_iterations", fused_iterations, 1)
        self.fused_iterations = fused_iterations
        self.automatic_optimization = fused_iterations == 1
        self._step_graph: StepGraph | None = None
        self._stepped_lr: list[float] = []  # the learning rates of the last optimizer step
        self._lr_followed_schedule = True  # in every iteration of the last step

    @property
    def log_every_n_iterations(self) -> int:
        return self.trainer.log_every_n_steps * self.fused_iterations

    def setup(self, stage: str) -> None:
        first = not self._prepared
        super().setup(stage)
        if not first or stage != "fit" or self.fused_iterations == 1:
            return
        check_fused_iterations(self.fused_iterations, getattr(self.trainer, "datamodule", None), {})
        if not self.cuda_graphs or self.compile_net:
            return
        if self.trainer.world_size == 1:
            self._graph_pending = False  # the whole step's graph instead of the network's
            self._step_graph = StepGraph()
        else:
            rank_zero_warn(
                "module.cuda_graphs captures a whole fused step on one device; under DDP each "
                "iteration's forward and backward are graphed instead"
            )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        images, labels = batch  # (K, B, ...): K batches
        graph = self._step_graph
        if graph is not None and graph.captured and self._lr_followed_schedule:
            self._graphed_step(images, labels)
            return None
        capture = graph is not None and self._lr_followed_schedule
        with graph.side_stream(images.device) if capture else contextlib.nullcontext():
            self._eager_step(images, labels)
        if capture and self._lr_followed_schedule:
            graph.capture(self._device_step, images, labels, self.optimizers().optimizer)
        return None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._stepped_lr = [group["lr"] for group in optimizer.param_groups]
        super().on_before_optimizer_step(optimizer)

    def _step_iteration(self, optimizer: Any, schedulers: list[Any]) -> list[float]:
        """The optimizer step of one iteration through Lightning (its hooks; global_step
        counts it), then the schedule's; returns the learning rates the step used."""
        scheduled = [group["lr"] for group in optimizer.param_groups]
        optimizer.step()
        self._lr_followed_schedule &= self._stepped_lr == scheduled
        for scheduler in schedulers:
            self.lr_scheduler_step(scheduler, None)
        return self._stepped_lr

    def _eager_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer, schedulers = self.optimizers(), self._iteration_schedulers()
        self._lr_followed_schedule = True
        for k in range(labels.shape[0]):
            loss = self.training_iteration(images[k], labels[k])
            optimizer.optimizer.zero_grad()
            self.trainer.strategy.pre_backward(loss)  # (DDP: this backward all-reduces)
            loss.backward()
            self._step_iteration(optimizer, schedulers)

    def _graphed_step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        optimizer, schedulers = self.optimizers(), self._iteration_schedulers()
        optimizer.optimizer.zero_grad(set_to_none=True)  # its steps below update nothing
        self._lr_followed_schedule = True
        lrs = [self._step_iteration(optimizer, schedulers) for _ in range(labels.shape[0])]
        self._step_graph.replay(images, labels, lrs)
        self.log_interval(self.global_step)

    def _device_step(
        self, images: torch.Tensor, labels: torch.Tensor, sgd: torch.optim.Optimizer
    ) -> None:
        """A step's device work only, as its CUDA graph holds it; no gradients afterwards."""
        for k in range(labels.shape[0]):
            self._step_graph.use_lr(sgd, k)
            loss = self.forward_and_count(images[k], labels[k])
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            sgd.step()
        sgd.zero_grad(set_to_none=True)

    def _iteration_schedulers(self) -> list[Any]:
        """The schedules stepped every iteration (a plateau schedule: after validations)."""
        configs = self.trainer.lr_scheduler_configs
        return [c.scheduler for c in configs if not isinstance(c.scheduler, ReduceLROnPlateau)]

    def on_validation_end(self) -> None:
        super().on_validation_end()
        value = self.trainer.callback_metrics.get("val/error")
        if self.automatic_optimization or value is None or self.trainer.sanity_checking:
            return
        if self.trainer.state.fn == TrainerFn.FITTING:  # as Lightning's automatic optimization
            for config in self.trainer.lr_scheduler_configs:
                if isinstance(config.scheduler, ReduceLROnPlateau):
                    self.lr_scheduler_step(config.scheduler, value)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["reslab"]["fused_iterations"] = self.fused_iterations

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        fused = checkpoint["reslab"].get("fused_iterations", 1)  # (a Classifier's: 1)
        if fused != self.fused_iterations:
            raise ValueError(
                f"module.fused_iterations={self.fused_iterations}, but the checkpoint was "
                f"trained with module.fused_iterations={fused} (Lightning counts its progress "
                f"differently for each): resume with module.fused_iterations={fused}"
            )


class StepGraph:
    """A whole fused training step captured once in one CUDA graph and replayed for every
    later step: one launch instead of hundreds of kernel launches from Python.

    The step's inputs are copied into static tensors before each replay. Each iteration's
    learning rate is read from a (K, param groups) device tensor that :meth:`replay` fills
    (only when it changed), so the schedule goes on without a new capture; the optimizer must
    have a fused implementation that takes a tensor learning rate (``torch.optim.SGD``). Batch
    norm's running statistics are updated in place by the graph, as eagerly. The step before
    the capture runs eagerly on a side stream (it creates the momentum buffers and lets cuDNN
    choose its kernels); the capture trains nothing itself. Off CUDA there is no graph:
    :meth:`replay` runs the step's Python on the static tensors with each iteration's learning
    rate, the same work in the same order.

    Use: ``with graph.side_stream(device): <the step, eagerly>``, then ``graph.capture(step,
    images, labels, optimizer)`` where ``step(images, labels, optimizer)`` does the device work
    and calls ``graph.use_lr(optimizer, k)`` before iteration k's optimizer step; then
    ``graph.replay(images, labels, lrs)`` (``lrs``: K lists of each group's learning rate)."""

    def __init__(self) -> None:
        self.captured = False
        self._graph: torch.cuda.CUDAGraph | None = None
        self._step: Step | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._lr: torch.Tensor | None = None  # (K, groups) on the device
        self._lr_values: list[list[float]] = []
        self._mode = ""  # "capture" or "replay" while the step's Python runs

    @contextlib.contextmanager
    def side_stream(self, device: torch.device) -> Iterator[None]:
        """Runs the enclosed (eager) step on a side stream, as CUDA graph capture wants."""
        if device.type != "cuda":
            yield
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(device).wait_stream(side)

    def use_lr(self, optimizer: torch.optim.Optimizer, k: int) -> None:
        """Iteration ``k``'s learning rates: read from the device tensor in the graph; the
        host's values when the step runs without one."""
        if self._mode == "capture":
            assert self._lr is not None
            for g, group in enumerate(optimizer.param_groups):
                group["lr"] = self._lr[k, g]
        elif self._mode == "replay":
            for group, lr in zip(optimizer.param_groups, self._lr_values[k], strict=True):
                group["lr"] = lr

    def capture(
        self, step: Step, images: torch.Tensor, labels: torch.Tensor, optimizer: Any
    ) -> None:
        """Captures ``step`` on static copies of ``images`` (K, B, ...) and ``labels`` (K, B);
        nothing is computed until :meth:`replay`."""
        self._step, self._optimizer = step, optimizer
        self._images, self._labels = images.detach().clone(), labels.detach().clone()
        floats = [group["lr"] for group in optimizer.param_groups]
        self._lr_values = [list(floats) for _ in range(labels.shape[0])]
        self.captured = True
        if not images.is_cuda:
            return
        if "fused" not in optimizer.defaults:
            raise ValueError(
                "module.cuda_graphs captures the whole step with a fused optimizer; "
                f"{type(optimizer).__name__} has none: use torch.optim.SGD, or "
                "module.fused_iterations=1"
            )
        self._lr = torch.tensor(self._lr_values, dtype=torch.float32, device=images.device)
        for group in optimizer.param_groups:
            group["fused"] = True  # torch's fused SGD reads a tensor learning rate on the device
        dtype, autocast = torch.get_autocast_dtype("cuda"), torch.is_autocast_enabled("cuda")
        self._graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        self._mode = "capture"
        try:
            # autocast without its weight cache, which a graph must not hold across replays
            with (
                torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False),
                torch.cuda.graph(self._graph),
            ):
                step(self._images, self._labels, optimizer)
        finally:
            self._mode = ""
            for group, lr in zip(optimizer.param_groups, floats, strict=True):
                group["lr"] = lr

    def replay(self, images: torch.Tensor, labels: torch.Tensor, lrs: list[list[float]]) -> None:
        """Runs the captured step on ``images`` and ``labels`` with iteration k's learning
        rates ``lrs[k]``."""
        assert self._images is not None and self._labels is not None, "capture() first"
        if images.shape != self._images.shape:
            raise ValueError(
                f"a captured step takes batches of shape {tuple(self._images.shape)}; got "
                f"{tuple(images.shape)}"
            )
        self._images.copy_(images)
        self._labels.copy_(labels)
        if lrs != self._lr_values:
            self._lr_values = [list(row) for row in lrs]
            if self._lr is not None:
                self._lr.copy_(torch.tensor(lrs, dtype=torch.float32))
        if self._graph is not None:
            self._graph.replay()
            return
        assert self._step is not None and self._optimizer is not None
        floats = [group["lr"] for group in self._optimizer.param_groups]
        self._mode = "replay"
        try:
            self._step(self._images, self._labels, self._optimizer)
        finally:
            self._mode = ""
            for group, lr in zip(self._optimizer.param_groups, floats, strict=True):
                group["lr"] = lr
