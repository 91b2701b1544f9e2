"""Fused iterations: K iterations (forward, backward, optimizer and schedule step) in one Lightning
step, over K batches indexed and augmented together (``BatchLoader(fused=K)``), so that the loop and
the batch's preparation cost once per K; with ``module.cuda_graphs``, one CUDA graph (StepGraph)."""

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch

from reslab.module import Classifier, graph_autocast
from reslab.validation import is_int, require_int


def trainer(
    fused_iterations: int = 1, checkpoint_every_n_steps: int | None = None, **kwargs: Any
) -> L.Trainer:
    """Lightning's ``Trainer(**kwargs)``, its ``log_every_n_steps`` and integer
    ``val_check_interval`` given in iterations and turned into its steps of ``fused_iterations``
    (K). A ``ValueError`` names every interval K does not divide (``checkpoint_every_n_steps``,
    the checkpoint callback's, too), and then the settings that a fused step cannot keep."""
    k = require_int("module.fused_iterations", fused_iterations, 1)
    # reslab's intervals count iterations: Lightning would read a float as a share of an epoch
    require_int("trainer.log_every_n_steps", kwargs.get("log_every_n_steps", 50), 1)
    require_int("optim.max_steps", kwargs.get("max_steps"), 1, note="(iterations to train)")
    require_int("callbacks.checkpoint.every_n_train_steps", checkpoint_every_n_steps, 0,
                optional=True, note="(iterations; 0: only at the end)")  # fmt: skip
    require_int("trainer.check_val_every_n_epoch", kwargs.get("check_val_every_n_epoch"), 1,
                optional=True, note="(epochs; null: by val_check_interval)")  # fmt: skip
    if (epochs := kwargs.get("max_epochs", -1)) not in (None, -1) or isinstance(epochs, bool):
        raise ValueError(  # Lightning would end the run there, before optim.max_steps
            f"trainer.max_epochs={epochs!r} is not valid: reslab trains by iterations "
            "(optim.max_steps), across epochs; valid: -1 or null"
        )
    if (accumulate := kwargs.get("accumulate_grad_batches", 1)) != 1:
        raise ValueError(  # iterations are optimizer steps: the data order and draws count them
            f"trainer.accumulate_grad_batches={accumulate!r} is not valid: a reslab iteration is "
            "one batch and one optimizer step (the paper's); valid: 1 (a larger data.batch_size "
            "for a larger batch)"
        )
    if not isinstance(interval := kwargs.get("val_check_interval"), str | None):
        require_int("trainer.val_check_interval", interval, 1,
                    note="(iterations), or a time 'DD:HH:MM:SS'")  # fmt: skip
    intervals = {
        "trainer.log_every_n_steps": kwargs.get("log_every_n_steps"),
        "trainer.val_check_interval": kwargs.get("val_check_interval"),
        "optim.max_steps": kwargs.get("max_steps"),
        "callbacks.checkpoint.every_n_train_steps": checkpoint_every_n_steps,
    }
    if bad := {key: v for key, v in intervals.items() if is_int(v) and v > 0 and v % k}:
        said = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise ValueError(
            f"{said} {'is' if len(bad) == 1 else 'are'} not a multiple of "
            f"module.fused_iterations={k}: a fused step of {k} iterations ends only at "
            f"multiples of {k}; valid: multiples of {k}, or fused_iterations a divisor "
            f"of {math.gcd(*bad.values())}"
        )
    for key in ("log_every_n_steps", "val_check_interval"):
        if is_int(kwargs.get(key)):  # (a validation interval may be a time or a fraction)
            kwargs[key] //= k
    built = L.Trainer(**kwargs)
    settings = {  # what a fused step cannot keep: {said: refused}
        f"trainer.gradient_clip_val={built.gradient_clip_val}": bool(built.gradient_clip_val),
        f"trainer.precision={built.precision} (its gradient scaler; bf16-mixed needs none)": (
            getattr(built.precision_plugin, "scaler", None) is not None
        ),
    }
    if k > 1 and (refused := [said for said, bad in settings.items() if bad]):
        raise ValueError(
            f"module.fused_iterations={k} cannot run with {'; '.join(refused)}: use "
            "module.fused_iterations=1 for those"
        )
    return built


class FusedClassifier(Classifier):
    """The Classifier with ``fused_iterations`` (K) iterations per Lightning training step, in a
    Trainer built by :func:`trainer`: K = 1 is the Classifier, K > 1 manual optimization. Each
    optimizer step goes through Lightning (it counts in ``trainer.global_step``, its hooks run),
    the schedule steps every iteration; logging, validation and checkpoints come as with K = 1.

    With ``cuda_graphs``, without ``compile``, on one device, a :class:`StepGraph` replays the
    step's device work at the lrs of its K optimizer steps (run first on the host, without
    gradients), only after a step at its schedule's lr throughout (a callback's lr runs eagerly)."""

    def __init__(self, *args: Any, fused_iterations: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        k = require_int("module.fused_iterations", fused_iterations, 1)  # (built without trainer())
        self.fused_iterations = self.iterations_per_step = k
        self.automatic_optimization = fused_iterations == 1
        self._step_graph: StepGraph | None = None
        self._stepped_lr: list[Any] = []  # the learning rates of the last optimizer step
        self._lr_followed_schedule = True  # in every iteration of the last step

    def check_datamodule(self, datamodule: Any) -> None:
        """Refuses (``ValueError``) K > 1 with a dataset whose loader cannot group batches (not
        ``fuses_iterations``); reslab.checks calls it before any data loads."""
        k = self.fused_iterations
        if k > 1 and datamodule is not None and not getattr(datamodule, "fuses_iterations", False):
            raise ValueError(
                f"module.fused_iterations={k} needs an in-memory dataset (cifar10, cifar100, "
                f"fashion_mnist, synthetic); {type(datamodule).__name__} loads its batches one "
                "at a time: use module.fused_iterations=1"
            )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or self.fused_iterations == 1:
            return
        self.check_datamodule(self.trainer.datamodule)
        # (under DDP each iteration's forward and backward are graphed instead)
        if self.cuda_graphs and not self.compile_net and self.trainer.world_size == 1:
            self._graph_pending = False  # the whole step's graph instead of the network's
            self._step_graph = StepGraph()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        images, labels = batch  # (K, B, ...): K batches
        graph, optimizer = self._step_graph, self.optimizers()
        schedulers = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        followed, self._lr_followed_schedule = self._lr_followed_schedule, True
        if graph is not None and graph.captured and followed:
            optimizer.optimizer.zero_grad(set_to_none=True)  # the steps below update nothing
            lrs = [self._step(optimizer, schedulers) for _ in range(labels.shape[0])]
            graph.replay(images, labels, lrs)
            self.log_interval(self.global_step)
            return None
        capture = graph is not None and followed
        with graph.side_stream(images.device) if capture else contextlib.nullcontext():
            for k in range(labels.shape[0]):
                loss = super().training_step((images[k], labels[k]), batch_idx)
                optimizer.optimizer.zero_grad()
                self.trainer.strategy.pre_backward(loss)  # (DDP: this backward all-reduces)
                loss.backward()
                self._step(optimizer, schedulers)
        if capture and self._lr_followed_schedule:
            graph.capture(self._device_step, images, labels, optimizer.optimizer)

    def _step(self, optimizer: Any, schedulers: list[Any]) -> list[Any]:
        """One iteration's optimizer step through Lightning, then the schedule's: the lrs used."""
        scheduled = [group["lr"] for group in optimizer.param_groups]
        optimizer.step()
        self._lr_followed_schedule &= self._stepped_lr == scheduled
        for scheduler in schedulers:
            self.lr_scheduler_step(scheduler, None)
        return self._stepped_lr

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._stepped_lr = [group["lr"] for group in optimizer.param_groups]
        super().on_before_optimizer_step(optimizer)

    def _device_step(self, images: torch.Tensor, labels: torch.Tensor, sgd: Any) -> None:
        """A step's device work only, as its CUDA graph holds it; no gradients afterwards."""
        for k in range(labels.shape[0]):
            for group, lr in zip(sgd.param_groups, self._step_graph.lrs[k], strict=True):
                group["lr"] = lr
            loss = self.forward_and_count(images[k], labels[k])
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            sgd.step()
        sgd.zero_grad(set_to_none=True)

    @classmethod
    def check_resume(cls, checkpoint: dict[str, Any], fused_iterations: int = 1, **_: Any) -> None:
        """A ``ValueError`` when ``checkpoint`` was trained with other ``fused_iterations``."""
        fused = checkpoint["reslab"]["iterations_per_step"]
        if fused != fused_iterations:
            raise ValueError(
                f"module.fused_iterations={fused_iterations}, but the checkpoint was trained with "
                f"module.fused_iterations={fused} (Lightning counts its progress differently for "
                f"each): resume with module.fused_iterations={fused}"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.check_resume(checkpoint, self.fused_iterations)


class StepGraph:
    """A training step captured once in one CUDA graph and replayed for every later step.

    The step runs eagerly once ``with side_stream(device)`` (momentum buffers made, cuDNN's
    kernels chosen); ``capture(step, images, labels, optimizer)`` captures, training nothing,
    ``step(images, labels, optimizer)``, which runs iteration k at the group lrs ``lrs[k]``;
    ``replay(images, labels, lrs)`` copies the inputs and ``lrs`` (K lists of each group's lr)
    into the device tensor that torch's fused SGD reads. Off CUDA, the replay runs ``step``."""

    def __init__(self) -> None:
        self.captured = False
        self.lrs: Any = []  # K rows of each group's lr: a device tensor in a graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._run: Callable[[], None] = lambda: None
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._lr_values: list[list[Any]] = []  # what self.lrs holds on the device

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

    def capture(
        self, step: Callable[..., None], images: torch.Tensor, labels: torch.Tensor, optimizer: Any
    ) -> None:
        """Captures ``step`` on copies of ``images`` (K, B, ...) and ``labels`` (K, B)."""
        self._inputs = images.detach().clone(), labels.detach().clone()

        def run() -> None:  # the scheduled (float) lr put back after the step
            floats = [group["lr"] for group in optimizer.param_groups]
            try:
                step(*self._inputs, optimizer)
            finally:
                for group, lr in zip(optimizer.param_groups, floats, strict=True):
                    group["lr"] = lr

        self._run, self.captured = run, True
        if not images.is_cuda:
            return
        if "fused" not in optimizer.defaults:
            raise ValueError(
                "module.cuda_graphs captures the whole step with a fused optimizer; "
                f"{type(optimizer).__name__} has none: use torch.optim.SGD, or "
                "module.fused_iterations=1"
            )
        floats = [group["lr"] for group in optimizer.param_groups]
        self.lrs = torch.tensor([floats] * labels.shape[0], device=images.device)
        self._lr_values = [list(floats) for _ in range(labels.shape[0])]
        for group in optimizer.param_groups:
            group["fused"] = True  # torch's fused SGD reads a tensor learning rate on the device
        self._graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with graph_autocast(), torch.cuda.graph(self._graph):
            run()

    def replay(self, images: torch.Tensor, labels: torch.Tensor, lrs: list[list[Any]]) -> None:
        """Runs the captured step on ``images`` and ``labels``, iteration k at ``lrs[k]``."""
        if images.shape != self._inputs[0].shape:
            raise ValueError(
                f"a captured step takes batches of shape {tuple(self._inputs[0].shape)}; got "
                f"{tuple(images.shape)}"
            )
        self._inputs[0].copy_(images)
        self._inputs[1].copy_(labels)
        if self._graph is None:
            self.lrs = lrs
            self._run()
            return
        if lrs != self._lr_values:  # a copy to the device only when they changed
            self._lr_values = [list(row) for row in lrs]
            self.lrs.copy_(torch.tensor(lrs))
        self._graph.replay()
