"""The paper's networks, residual and plain, from one builder: stem → stages of blocks → head.

A plain net is the residual net with its shortcuts removed (``shortcut="none"``): same layers,
same parameters under option A, so the two are exactly comparable (section 3.3 of the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("cifar",)
SHORTCUTS = ("none", "A", "B", "C")


def network_name(depth: int, shortcut: str) -> str:
    """The name users see in wandb, run folders and reports: ``plain-56``, ``resnet-56A``."""
    return f"plain-{depth}" if shortcut == "none" else f"resnet-{depth}{shortcut}"


def cifar_blocks_per_stage(depth: int) -> int:
    """n for a CIFAR net of depth 6n+2; a ValueError naming the valid depths otherwise."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR depth {depth!r} is not of the form 6n+2 with n >= 1; valid depths are "
            "8, 14, 20, 26, 32, 38, 44, 50, 56, ... (the paper uses 20, 32, 44, 56, 110, 1202)"
        )
    return (depth - 2) // 6


class ZeroPadShortcut(nn.Module):
    """Option A: a parameter-free identity. Where the block downsamples it keeps every other
    pixel, and where the channel count grows it appends zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A cannot shrink channels ({in_channels} → {out_channels})")
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class Projection(nn.Sequential):
    """Options B and C: a 1×1 convolution (with the block's stride) followed by BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut of one block; None for a plain block (``kind="none"``)."""
    if kind not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {kind!r}; valid choices are {', '.join(SHORTCUTS)}")
    if kind == "none":
        return None
    grows = stride != 1 or in_channels != out_channels
    if kind == "C" or (kind == "B" and grows):
        return Projection(in_channels, out_channels, stride)
    if grows:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3×3 conv layers, BN after each; the second ReLU comes after the addition."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, shortcut: nn.Module | None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = shortcut

    @property
    def residual(self) -> bool:
        return self.shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """stem → stages → global average pooling → fully connected layer (logits)."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, features: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _cifar_network(
    depth: int, shortcut: str, num_classes: int, in_channels: int, widths: tuple[int, ...]
) -> ResNet:
    n = cifar_blocks_per_stage(depth)
    stem = nn.Sequential(
        nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    )
    stages, channels = [], widths[0]
    for i, width in enumerate(widths):
        blocks = []
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            blocks.append(
                BasicBlock(
                    channels, width, stride, make_shortcut(shortcut, channels, width, stride)
                )
            )
            channels = width
        stages.append(nn.Sequential(*blocks))
    return ResNet(stem, nn.Sequential(*stages), channels, num_classes)


def _init_weights(net: nn.Module, zero_init_residual: bool) -> None:
    # He et al. 2015 ("Delving deep"): normal with std sqrt(2 / (k*k*c_out)), as fb.resnet.torch.
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:  # not in the paper: an option only, never a default
        for m in net.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def build_network(
    family: str,
    depth: int,
    shortcut: str,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    widths: tuple[int, ...] | list[int] = (16, 32, 64),
    zero_init_residual: bool = False,
) -> nn.Module:
    """A network of the paper as a plain ``nn.Module`` returning logits.

    Args:
        family: ``"cifar"``: depth 6n+2, three stages of 2n 3×3 layers (section 4.2).
        depth: number of weighted layers (convolutions and the fully connected layer).
        shortcut: ``"none"`` (plain net), ``"A"`` (zero-padding identity), ``"B"`` (projection
            where dimensions grow), ``"C"`` (projection on every shortcut).
        num_classes: size of the output layer.
        in_channels: channels of the input images (3 for CIFAR, 1 for Fashion-MNIST).
        widths: filters per stage; the paper's 16/32/64 by default.
        zero_init_residual: start every block's last BN at zero (not in the paper).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown network family {family!r}; valid choices are {FAMILIES}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut {shortcut!r}; valid choices are {', '.join(SHORTCUTS)}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    net = _cifar_network(depth, shortcut, num_classes, in_channels, tuple(widths))
    _init_weights(net, zero_init_residual)
    return net
