"""Parameters and multiply-adds of a network, as the paper counts them (section 3.3, Table 1):
multiply-adds of the convolutions and the fully connected layer for one image; BN, ReLU,
pooling and shortcut additions count nothing. On the meta device nothing is computed."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Part:
    """One part of a network: ``stem``, ``stage 1`` ... or ``head`` (pooling + classifier)."""

    name: str
    output_shape: tuple[int, ...]  # per image: (C, H, W) or (classes,)
    params: int
    multiply_adds: int


def count_parameters(net: nn.Module) -> int:
    """Number of parameters (weights and biases; BN's running statistics are buffers)."""
    return sum(p.numel() for p in net.parameters())


def _trace(
    net: nn.Module, input_shape: Sequence[int], watch: Sequence[nn.Module] = ()
) -> tuple[dict[str, int], dict[nn.Module, tuple[int, ...]]]:
    """Multiply-adds per module name ("Global": all) and per-image output shape per ``watch``."""
    if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"input_shape must be (channels, height, width), got {input_shape!r}")
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        shapes[module] = tuple(output.shape[1:])

    handles = [m.register_forward_hook(hook) for m in watch]
    modes = {m: m.training for m in net.modules()}
    param = next(net.parameters(), torch.zeros(()))
    x = torch.zeros(1, *map(int, input_shape), device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    try:
        net.eval()  # BN statistics unchanged
        with torch.no_grad(), counter:
            net(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    flops = counter.get_flop_counts()  # 2 FLOPs a multiply-add; names like "ResNet.stages.0"
    return {name: sum(by_op.values()) // 2 for name, by_op in flops.items()}, shapes


def count_multiply_adds(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one (C, H, W) image: output elements × in_channels / groups × kh × kw
    per convolution, in × out per FC layer (all FlopCounterMode counts in reslab's networks)."""
    return _trace(net, input_shape)[0].get("Global", 0)


def parts(net: nn.Module, input_shape: Sequence[int]) -> list[Part]:
    """Parameters and multiply-adds per top-level child of ``net``; ``stages``' children are
    ``stage 1``, ``stage 2``, ..., and ``pool`` + ``fc`` the ``head``."""
    groups: dict[str, dict[str, nn.Module]] = {}
    for name, child in net.named_children():
        if name == "stages":
            for i, (index, stage) in enumerate(child.named_children()):
                groups[f"stage {i + 1}"] = {f"stages.{index}": stage}
        else:
            groups.setdefault("head" if name in ("pool", "fc") else name, {})[name] = child
    watch = [m for members in groups.values() for m in members.values()]
    macs, shapes = _trace(net, input_shape, watch)
    root = type(net).__name__  # FlopCounterMode's name of the network
    return [
        Part(
            label,
            shapes.get([*members.values()][-1], ()),
            sum(count_parameters(m) for m in members.values()),
            sum(macs.get(f"{root}.{name}", 0) for name in members),
        )
        for label, members in groups.items()
    ]


def human(n: float) -> str:
    """40.55M, 3.66G: two decimals in the unit the paper uses."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
