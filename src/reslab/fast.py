"""The fast path's pieces that change how a network runs, never what it computes: batch norm
kept in fp32 under mixed precision, and the network's forward and backward captured in CUDA
graphs. The Classifier applies them from its options (``module.*`` in the config)."""

from __future__ import annotations

import torch
from torch import nn


class FP32BatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that under autocast (bf16 or fp16) normalises in fp32: input cast up,
    statistics, affine parameters and output fp32 (the next convolution casts it down)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if x.dtype == torch.float32 or not torch.is_autocast_enabled(device):
            return super().forward(x)
        with torch.autocast(device, enabled=False):
            return super().forward(x.float())


def batchnorm_in_fp32(net: nn.Module) -> int:
    """Makes every ``nn.BatchNorm2d`` of ``net`` an :class:`FP32BatchNorm2d` in place (same
    parameters, buffers and state dict); returns how many it changed."""
    batchnorms = [m for m in net.modules() if type(m) is nn.BatchNorm2d]
    for module in batchnorms:
        module.__class__ = FP32BatchNorm2d
    return len(batchnorms)


def cuda_graph_network(net: nn.Module, sample: torch.Tensor) -> nn.Module:
    """``net`` with its training forward and backward in CUDA graphs (``make_graphed_callables``)
    for inputs like ``sample`` (shape, dtype, memory format); evaluation runs eagerly. The
    capture leaves the BN running statistics as they were. ``sample`` is on a CUDA device."""
    buffers = [b.detach().clone() for b in net.buffers()]
    autocast, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    # make_graphed_callables asks for autocast without its weight cache during the capture.
    with torch.autocast("cuda", dtype=dtype, enabled=autocast, cache_enabled=False):
        graphed = torch.cuda.make_graphed_callables(net, (sample.detach().clone(),))
    with torch.no_grad():
        for buffer, saved in zip(net.buffers(), buffers, strict=True):
            buffer.copy_(saved)
    return graphed
