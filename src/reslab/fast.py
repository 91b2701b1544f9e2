"""The fast path's pieces that change how a network runs, never what it computes: batch norm
kept in fp32 under mixed precision, the network's forward and backward captured in CUDA graphs,
and a whole fused training step captured in one (``StepGraph``). The Classifier applies them
from its options (``module.*`` in the config)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


class FP32BatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that, under autocast (bf16 or fp16 mixed precision), normalises in fp32:
    its input is cast up, its statistics and affine parameters stay fp32, and its output is
    fp32 (the next convolution casts it down again). Outside autocast it is BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if x.dtype == torch.float32 or not torch.is_autocast_enabled(device):
            return super().forward(x)
        with torch.autocast(device, enabled=False):
            return super().forward(x.float())


def batchnorm_in_fp32(net: nn.Module) -> int:
    """Makes every ``nn.BatchNorm2d`` of ``net`` an :class:`FP32BatchNorm2d` in place (same
    parameters, buffers and state dict); returns how many it changed."""
    changed = 0
    for module in net.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = FP32BatchNorm2d
            changed += 1
    return changed


def cuda_graph_network(net: nn.Module, sample: torch.Tensor) -> nn.Module:
    """``net`` with its training forward and backward captured in CUDA graphs
    (``torch.cuda.make_graphed_callables``) for inputs shaped like ``sample``: each training
    iteration replays two graphs instead of launching every kernel from Python. Evaluation (the
    module in eval mode) runs eagerly. Capturing runs the network a few times on ``sample``;
    its BN running statistics are put back afterwards, so training is not changed by it.

    The input of every training step must have ``sample``'s shape, dtype and memory format
    (the training batches are of one size: the last partial batch is dropped).
    """
    if not sample.is_cuda:
        raise ValueError(f"CUDA graphs need a CUDA device; the batch is on {sample.device}")
    buffers = [b.detach().clone() for b in net.buffers()]
    autocast = torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda")
    # make_graphed_callables asks for autocast without its weight cache during the capture.
    with torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
        graphed = torch.cuda.make_graphed_callables(net, (sample.detach().clone(),))
    with torch.no_grad():
        for buffer, saved in zip(net.buffers(), buffers, strict=True):
            buffer.copy_(saved)
    return graphed


def bytes_kept_for_backward(net: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the tensors a training forward of ``net`` on ``images`` keeps for its backward
    pass (every tensor autograd saves, counted as it is saved): the activation memory that
    activation checkpointing trims. With ``net`` and ``images`` on the meta device it costs no
    memory and needs no GPU."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(images)
    return total


class StepGraph:
    """A whole fused training step (K iterations: forward, counts, backward, optimizer step)
    captured once in one CUDA graph and replayed for every later step: one launch instead of
    hundreds of kernel launches from Python.

    The step's inputs are copied into static tensors before each replay. The learning rate of
    each iteration is read from a (K, param groups) device tensor that :meth:`replay` fills
    (only when it changed), so the schedule and the warm-up go on without a new capture; the
    optimizer must be one with a fused implementation that takes a tensor learning rate
    (``torch.optim.SGD``: its groups' ``fused`` is set). Batch norm's running statistics and
    ``num_batches_tracked`` are updated in place by the graph, as eagerly. The step before the
    capture runs eagerly on a side stream (it creates the momentum buffers and lets cuDNN
    choose its kernels); the capture trains nothing itself.

    Off CUDA there is no graph: :meth:`replay` runs the step's Python on the static tensors
    with each iteration's learning rate, the same device work in the same order (how
    ``benchmarks/gpu.sh --check --dry-run`` and the tests run this path on a CPU).

    Use: ``with graph.warm_up(device): <the step, eagerly>``, then ``graph.capture(step,
    images, labels, optimizer)`` where ``step(images, labels, optimizer)`` does the device work
    and calls ``graph.use_lr(optimizer, k)`` before iteration k's optimizer step; then
    ``graph.replay(images, labels, lrs)`` for every later step (``lrs``: K lists of each
    group's learning rate)."""

    def __init__(self) -> None:
        self.captured = False
        self._graph: torch.cuda.CUDAGraph | None = None
        self._step: Callable[[torch.Tensor, torch.Tensor, torch.optim.Optimizer], None] | None
        self._step = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._images: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._lr: torch.Tensor | None = None  # (K, groups) on the device
        self._lr_values: list[list[float]] = []
        self._mode = ""  # "capture" or "replay" while the step's Python runs

    @contextlib.contextmanager
    def warm_up(self, device: torch.device) -> Iterator[None]:
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
        """Iteration ``k``'s learning rates for its optimizer step: read from the device
        tensor in the graph; the host's values when the step runs without one."""
        if self._mode == "capture":
            assert self._lr is not None
            for g, group in enumerate(optimizer.param_groups):
                group["lr"] = self._lr[k, g]
        elif self._mode == "replay":
            for group, lr in zip(optimizer.param_groups, self._lr_values[k], strict=True):
                group["lr"] = lr

    def capture(
        self,
        step: Callable[[torch.Tensor, torch.Tensor, torch.optim.Optimizer], None],
        images: torch.Tensor,
        labels: torch.Tensor,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Captures ``step`` on static copies of ``images`` (K, B, ...) and ``labels`` (K, B);
        nothing is computed until :meth:`replay`."""
        k = labels.shape[0]
        self._step, self._optimizer = step, optimizer
        self._images, self._labels = images.detach().clone(), labels.detach().clone()
        floats = [group["lr"] for group in optimizer.param_groups]
        self._lr_values = [list(floats) for _ in range(k)]
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
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
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
        rates ``lrs[k]`` (copied to the device only when they changed)."""
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
