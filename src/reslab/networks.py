"""The paper's networks from one builder, stem → stages of blocks → head: ``cifar`` (section
4.2) and ``imagenet`` (Table 1); a plain net is the residual one without shortcuts. And their
names (``network_name``, ``parse_network_name``: the one grammar of names)."""

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from reslab.validation import is_int, require_choice, require_int

FAMILIES = ("cifar", "imagenet")
SHORTCUTS = ("none", "A", "B", "C")
DEFAULT_WIDTHS = {"cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}
# Table 1: blocks per stage (conv2_x .. conv5_x) and whether the blocks are bottlenecks.
IMAGENET_STAGES: dict[int, tuple[tuple[int, ...], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
_NETWORK_SPEC = re.compile(r"(plain|resnet)-(\d+)([ABC]?)(?:-(\d)layer)?(-v1\.5)?(?:@(\d+))?")
# What each family builds, in names: the hint when a net= name is refused.
VALID_NAMES = {
    "cifar": "plain-N or resnet-N with shortcut A, B or C and N = 6n+2 (20, 32, 44, 56, 110, "
    "1202, ...), optionally -1layer or -3layer (3: n a multiple of 3) and @seed, e.g. plain-20, "
    "resnet-56A, resnet-56A-1layer, resnet-110A@3",
    "imagenet": "plain-N or resnet-N with shortcut A, B or C and N = 18, 34, 50, 101, 152, "
    "optionally -v1.5 (50, 101, 152) and @seed, e.g. plain-34, resnet-34B, resnet-50B, "
    "resnet-50B-v1.5",
}


def network_name(
    depth: int | str, shortcut: str, block_layers: int | str = 2, bottleneck_stride: str = "1x1"
) -> str:
    """The name in wandb, run folders and reports: ``plain-56``, ``resnet-56A``,
    ``resnet-56A-1layer`` (blocks of one layer), ``resnet-50B-v1.5`` (stride on the 3×3)."""
    name = f"plain-{depth}" if shortcut == "none" else f"resnet-{depth}{shortcut}"
    if int(block_layers) != 2:
        name += f"-{int(block_layers)}layer"
    if bottleneck_stride == "3x3":
        name += "-v1.5"
    return name


def parse_network_name(spec: str, family: str | None = None) -> dict[str, Any]:
    """The inverse of ``network_name``, with an optional ``@seed`` (``"resnet-110A@3"``): depth,
    shortcut, block_layers, bottleneck_stride and seed (0 when not given). With ``family`` the
    name must be one that family builds, else a ValueError naming its valid names."""
    match = _NETWORK_SPEC.fullmatch(str(spec).strip())
    if match is None:
        raise ValueError(
            f"net={spec!r} is not a network name; write it as reslab names networks: plain-20, "
            "resnet-56A, resnet-34B, resnet-56A-1layer, resnet-50B-v1.5, optionally @seed "
            "(resnet-110A@3)"
        )
    kind, depth, shortcut, layers, v15, seed = match.groups()
    if (kind == "plain") != (shortcut == ""):
        raise ValueError(
            f"net={spec!r}: a plain net has no shortcut letter and a resnet needs one of A, B, C "
            "(plain-20, resnet-20A)"
        )
    parsed = {
        "depth": int(depth),
        "shortcut": shortcut or "none",
        "block_layers": int(layers) if layers else 2,
        "bottleneck_stride": "3x3" if v15 else "1x1",
        "seed": int(seed) if seed else 0,
    }
    if family is not None:
        require_choice("model.family", family, FAMILIES)
        try:
            _blocks(family, parsed["depth"], parsed["block_layers"], parsed["bottleneck_stride"])
        except ValueError as err:
            raise ValueError(
                f"net={spec!r} is not in the {family} family ({err}); valid {family} names: "
                f"{VALID_NAMES[family]}"
            ) from None
    return parsed


def cifar_blocks_per_stage(depth: int) -> int:
    """n for a CIFAR net of depth 6n+2; a ValueError naming the valid depths otherwise."""
    valid = (
        "of the form 6n+2 (the cifar family): 8, 14, 20, 26, 32, 38, 44, 50, 56, ...; the "
        "paper's are 20, 32, 44, 56, 110, 1202"
    )
    if not is_int(depth) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"model.depth={depth!r} is not valid; valid: an integer >= 8 {valid}")
    return (depth - 2) // 6


class ZeroPadShortcut(nn.Module):
    """Option A: a parameter-free identity that keeps every other pixel where the block
    downsamples and appends zero channels where the channel count grows."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """The shortcut of one block (``kind`` one of SHORTCUTS); None for a plain block."""
    if kind == "none":
        return None
    grows = stride != 1 or in_channels != out_channels
    if kind == "C" or (kind == "B" and grows):  # a 1×1 conv with the block's stride, and BN
        conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels))
    return ZeroPadShortcut(in_channels, out_channels, stride) if grows else nn.Identity()


class _Block(nn.Module):
    """convk, bnk per (kernel, channels, stride) of ``convs``, ReLU between, + shortcut, ReLU."""

    def __init__(
        self, in_channels: int, convs: Sequence[tuple[int, int, int]], shortcut: nn.Module | None
    ) -> None:
        super().__init__()
        self.layers = len(convs)
        for k, (kernel, channels, stride) in enumerate(convs, 1):
            conv = nn.Conv2d(in_channels, channels, kernel, stride, padding=kernel // 2, bias=False)
            self.add_module(f"conv{k}", conv)
            self.add_module(f"bn{k}", nn.BatchNorm2d(channels))
            in_channels = channels
        self.shortcut = shortcut  # last: the order Figure 7 finds response layers by

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for k in range(1, self.layers + 1):
            out = getattr(self, f"bn{k}")(getattr(self, f"conv{k}")(out))
            if k < self.layers:
                out = F.relu(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class BasicBlock(_Block):
    """Figure 2: 3×3 conv, BN, ReLU, 3×3 conv, BN, add the shortcut, ReLU; the stride on the
    first conv. ``layers`` 1 or 3 (not in the paper, experiment=block_length) has that many."""

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int, shortcut: nn.Module | None, layers: int = 2
    ) -> None:
        convs = [(3, width, stride)] + [(3, width, 1)] * (layers - 1)
        super().__init__(in_channels, convs, shortcut)


class Bottleneck(_Block):
    """Figure 5: 1×1 (reduce), 3×3, 1×1 (restore, ×``expansion``) convs, BN after each; the
    stride on the first 1×1 (``stride_on="1x1"``, the paper's) or the 3×3 (torchvision's v1.5)."""

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, shortcut: nn.Module | None,
        stride_on: str = "1x1",
    ) -> None:  # fmt: skip
        s1, s3 = (stride, 1) if stride_on == "1x1" else (1, stride)
        convs = [(1, width, s1), (3, width, s3), (1, width * self.expansion, 1)]
        super().__init__(in_channels, convs, shortcut)
        self.stride_on = stride_on


@contextmanager
def _running_stats_frozen(block: nn.Module) -> Iterator[None]:
    """BN running-stat updates go to scratch copies: a recomputed block counts no batch twice."""
    kept = [(m, name, b) for m in block.modules() for name, b in m.named_buffers(recurse=False)]
    for module, name, buffer in kept:
        setattr(module, name, buffer.clone())
    try:
        yield
    finally:
        for module, name, buffer in kept:
            setattr(module, name, buffer)


class ResNet(nn.Module):
    """stem → stages → global average pooling → fully connected layer (logits). Training with
    ``activation_checkpointing`` keeps each block's input only and recomputes the rest in the
    backward pass (one more forward of compute, the same result to the bit)."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, features: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.stages = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(features, num_classes)
        self.activation_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            for stage in self.stages:
                for block in stage:
                    x = checkpoint(
                        block, x, use_reentrant=False,
                        context_fn=lambda b=block: (nullcontext(), _running_stats_frozen(b)),
                    )  # fmt: skip
        else:
            x = self.stages(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _blocks(
    family: str, depth: int, block_layers: int, bottleneck_stride: str
) -> tuple[type[_Block], tuple[int, ...], dict[str, Any]]:
    """The block class, blocks per stage and block options; a ValueError names a bad key."""
    if family == "cifar":
        n = cifar_blocks_per_stage(depth)  # each of the three stages has 2n conv layers
        layers = [k for k in (1, 2, 3) if (2 * n) % k == 0]
        note = "(conv layers per residual block; the paper's is 2)"
        if 3 not in layers:
            note = (
                f"(depth {depth} has 2n = {2 * n} conv layers per stage, which blocks of 3 do "
                "not divide; 3 takes depths 20, 38, 56, 74, 92, 110, ...: 6n+2 with n a "
                "multiple of 3)"
            )
        require_choice("model.block_layers", block_layers, layers, note)
        block, per_stage = BasicBlock, (2 * n // block_layers,) * 3
        options: dict[str, Any] = {"layers": block_layers}
    else:
        require_choice("model.depth", depth, IMAGENET_STAGES, "(the imagenet family, Table 1)")
        per_stage, bottleneck = IMAGENET_STAGES[depth]
        require_choice(
            "model.block_layers", block_layers, (2,),
            "(the imagenet family has the paper's blocks; 1 and 3 are a cifar-family study)",
        )  # fmt: skip
        block = Bottleneck if bottleneck else BasicBlock
        options = {"stride_on": bottleneck_stride} if bottleneck else {}
    if block is Bottleneck:
        strides = ("1x1", "3x3")
        note = "(1x1: the paper's stride placement; 3x3: torchvision's v1.5)"
    else:
        strides = ("1x1",)
        note = f"({family} depth {depth} has no bottleneck blocks; 3x3 is for imagenet 50-152)"
    require_choice("model.bottleneck_stride", bottleneck_stride, strides, note)
    return block, per_stage, options


def build_network(
    family: str,
    depth: int,
    shortcut: str,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    widths: Sequence[int] | None = None,
    zero_init_residual: bool = False,
    block_layers: int = 2,
    bottleneck_stride: str = "1x1",
    activation_checkpointing: bool = False,
) -> nn.Module:
    """A network of the paper returning logits; a bad argument is a ValueError naming its
    config key and what is valid. ``depth`` counts the weighted layers; ``shortcut`` "none"
    (plain), "A" (zero-padding identity), "B" (projections where dimensions grow) or "C" (all
    projections); ``widths``: filters per stage (None: the family's; a bottleneck outputs 4×).
    Not in the paper: ``zero_init_residual``, ``block_layers`` (cifar only),
    ``bottleneck_stride="3x3"`` (torchvision's v1.5) and ``activation_checkpointing``."""
    require_choice("model.family", family, FAMILIES)
    require_choice("shortcut", shortcut, SHORTCUTS, "(none: the plain net)")
    block, blocks_per_stage, options = _blocks(family, depth, block_layers, bottleneck_stride)
    widths = DEFAULT_WIDTHS[family] if widths is None else widths
    n_stages = len(blocks_per_stage)
    if isinstance(widths, str) or not isinstance(widths, Sequence) or len(widths) != n_stages:
        raise ValueError(
            f"model.widths={widths!r} is not valid; valid: {n_stages} widths, one per stage, "
            f"e.g. {list(DEFAULT_WIDTHS[family])} (the {family} family's), or null"
        )
    for i, width in enumerate(widths):
        require_int(f"model.widths[{i}]", width, low=1)
    require_int("num_classes", num_classes, low=1)
    require_int("in_channels", in_channels, low=1)
    require_choice("model.zero_init_residual", zero_init_residual, (False, True))
    require_choice("model.activation_checkpointing", activation_checkpointing, (False, True))

    # The stem: section 4.2's one 3×3 conv layer; Table 1's conv1 (7×7, stride 2) and max pool.
    kernel, stride = (3, 1) if family == "cifar" else (7, 2)
    conv = nn.Conv2d(in_channels, widths[0], kernel, stride, padding=kernel // 2, bias=False)
    stem = nn.Sequential(conv, nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    if family == "imagenet":
        stem.append(nn.MaxPool2d(3, stride=2, padding=1))
    stages, channels = [], widths[0]
    for i, (width, blocks) in enumerate(zip(widths, blocks_per_stage, strict=True)):
        stage = []  # conv2_x ... of Table 1: each stage after the first starts with stride 2
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            sc = make_shortcut(shortcut, channels, width * block.expansion, stride)
            stage.append(block(channels, width, stride, sc, **options))
            channels = width * block.expansion
        stages.append(nn.Sequential(*stage))
    net = ResNet(stem, nn.Sequential(*stages), channels, num_classes)
    # He et al. 2015 ("Delving deep"): normal with std sqrt(2 / (k*k*c_out)), as fb.resnet.torch.
    for m in net.modules():
        if isinstance(m, nn.Conv2d):  # (BN starts at weight 1, bias 0: PyTorch's default)
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, _Block) and zero_init_residual:  # not in the paper: an option only
            nn.init.zeros_(getattr(m, f"bn{m.layers}").weight)  # the last BN
    net.activation_checkpointing = activation_checkpointing
    return net
