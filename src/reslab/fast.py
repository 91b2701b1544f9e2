"""The fast path's pieces that change how a network runs, never what it computes: batch norm
kept in fp32 under mixed precision, and the network's forward and backward captured in CUDA
graphs. The Classifier applies them from its options (``module.*`` in the config)."""

from __future__ import annotations

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
    (``torch.cuda.make_graphed_callables``) for inputs of ``sample``'s shape, dtype and memory
    format (training batches are of one size); evaluation runs eagerly. The capture's runs on
    ``sample`` leave the BN running statistics as they were."""
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
