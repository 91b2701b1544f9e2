import copy
import pickle
import re
from collections.abc import Mapping

import pytest
import torch
import torchvision

from reslab.networks import (
    BasicBlock,
    Bottleneck,
    ZeroPadShortcut,
    build_network,
    cifar_blocks_per_stage,
    network_name,
)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# Section 4.2 and Table 6: option A or plain, 10 classes (= 97,216 n - 21,926).
PAPER_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth", sorted(PAPER_PARAMS))
@pytest.mark.parametrize("shortcut", ["none", "A"])
def test_cifar_parameter_counts_match_the_paper(depth: int, shortcut: str) -> None:
    assert n_params(build_network("cifar", depth, shortcut)) == PAPER_PARAMS[depth]


def test_resnet_1202_has_19_4m_parameters() -> None:
    net = build_network("cifar", 1202, "A")
    assert n_params(net) == 19_421_274
    assert n_params(net) == 97_216 * 200 - 21_926


@pytest.mark.parametrize("depth", [8, 20, 56])
def test_option_b_adds_two_projections_and_c_adds_one_per_block(depth: int) -> None:
    plain = n_params(build_network("cifar", depth, "none"))
    assert n_params(build_network("cifar", depth, "B")) == plain + 2_752
    n = cifar_blocks_per_stage(depth)
    # C: a 1x1 projection + BN on every block:
    # 16->16 (n blocks), 16->32, 32->32 (n-1), 32->64, 64->64 (n-1)
    c_extra = (
        n * (256 + 32) + (512 + 64) + (n - 1) * (1024 + 64) + (2048 + 128) + (n - 1) * (4096 + 128)
    )
    assert n_params(build_network("cifar", depth, "C")) == plain + c_extra


def test_hundred_classes_add_5850_parameters() -> None:
    assert n_params(build_network("cifar", 20, "A", num_classes=100)) == 269_722 + 5_850


@pytest.mark.parametrize("shortcut", ["none", "A", "B", "C"])
@pytest.mark.parametrize(("in_channels", "size"), [(3, 32), (1, 28)])
def test_forward_shapes(shortcut: str, in_channels: int, size: int) -> None:
    net = build_network("cifar", 14, shortcut, num_classes=7, in_channels=in_channels)
    out = net(torch.randn(5, in_channels, size, size))
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()


def test_option_a_is_parameter_free_at_every_depth() -> None:
    for depth in (8, 20, 32, 44, 56, 110):
        assert n_params(build_network("cifar", depth, "A")) == n_params(
            build_network("cifar", depth, "none")
        )
    net = build_network("cifar", 20, "A")
    pads = [m for m in net.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(pads) == 2  # where 16 -> 32 and 32 -> 64
    assert all(n_params(p) == 0 for p in pads)


def test_zero_pad_shortcut_subsamples_and_pads_with_zeros() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


def _zero_residual_branches(net: torch.nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, BasicBlock):
            torch.nn.init.zeros_(m.bn2.weight)
            torch.nn.init.zeros_(m.bn2.bias)


def test_plain_net_has_no_additions_and_residual_net_has_one_per_block() -> None:
    """With every block's residual branch F silenced, a residual block passes relu(x) on,
    while a plain block outputs zeros: a plain net's output then ignores its input."""
    x1, x2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    plain, resnet = build_network("cifar", 20, "none"), build_network("cifar", 20, "A")
    for net in (plain, resnet):
        _zero_residual_branches(net)
        net.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x1), plain(x2))
        assert not torch.allclose(resnet(x1), resnet(x2))
    assert all(b.shortcut is None for b in plain.modules() if isinstance(b, BasicBlock))
    blocks = [b for b in resnet.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 9 and all(b.shortcut is not None for b in blocks)


def test_networks_pickle_and_deepcopy() -> None:
    """Option A is a module, not a lambda: checkpoints and DDP can pickle and copy it."""
    for shortcut in ("none", "A", "B", "C"):
        net = build_network("cifar", 8, shortcut).eval()
        x = torch.randn(2, 3, 32, 32)
        for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
            assert torch.equal(net(x), clone(x))


def test_he_initialisation_and_no_conv_bias() -> None:
    net = build_network("cifar", 56, "A")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    last = convs[-1]  # 64 -> 64, 3x3: std sqrt(2 / (9 * 64))
    assert last.weight.std().item() == pytest.approx((2 / (9 * 64)) ** 0.5, rel=0.05)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)


@pytest.mark.parametrize("depth", [21, 0, -8, 7, 2, 19])
def test_invalid_depth_lists_valid_depths(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"model\.depth={depth} is not valid; valid: .*8, 14, 20"):
        build_network("cifar", depth, "A")


def test_unknown_shortcut_and_family_name_the_choices() -> None:
    with pytest.raises(ValueError, match=r"shortcut='D' is not valid; valid: none, A, B, C"):
        build_network("cifar", 20, "D")
    with pytest.raises(
        ValueError, match=r"model\.family='vgg' is not valid; valid: cifar, imagenet"
    ):
        build_network("vgg", 20, "A")


def test_network_names() -> None:
    assert network_name(56, "none") == "plain-56"
    assert network_name(56, "A") == "resnet-56A"
    assert network_name(110, "B") == "resnet-110B"


# --- block_layers (CIFAR family; not in the paper) -------------------------------------------


@pytest.mark.parametrize("block_layers", [1, 3])
@pytest.mark.parametrize("shortcut", ["none", "A"])
def test_block_layers_keep_the_layers_and_parameters(block_layers: int, shortcut: str) -> None:
    """Each stage keeps its 2n conv layers, only grouped differently: same parameter count."""
    net = build_network("cifar", 20, shortcut, block_layers=block_layers)
    assert n_params(net) == PAPER_PARAMS[20]
    blocks = [m for m in net.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 * 6 // block_layers and all(b.layers == block_layers for b in blocks)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19  # stem + 18
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_block_layers_2_is_the_default_network() -> None:
    torch.manual_seed(0)
    default = build_network("cifar", 20, "A")
    torch.manual_seed(0)
    two = build_network("cifar", 20, "A", block_layers=2)
    assert default.state_dict().keys() == two.state_dict().keys()
    pairs = zip(default.state_dict().values(), two.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert "stages.2.2.conv2.weight" in default.state_dict()
    assert all(type(b) is BasicBlock and b.layers == 2 for stage in default.stages for b in stage)


def test_basic_block_is_figure_2() -> None:
    """conv, BN, ReLU, conv, BN, add the shortcut, ReLU: torchvision's BasicBlock."""
    block = BasicBlock(8, 8, 1, torch.nn.Identity()).eval()
    names = [name for name, _ in block.named_children()]
    assert names == ["conv1", "bn1", "conv2", "bn2", "shortcut"]
    for m in block.modules():  # BN that is not the identity, so a misplaced ReLU shows
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight)
            torch.nn.init.normal_(m.bias)
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        expected = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        assert torch.allclose(block(x), torch.relu(expected + x), atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_layers_block_adds_its_input_after_its_last_bn(layers: int) -> None:
    """relu(bnK(convK(...relu(bn1(conv1(x)))...)) + x): the shortcut spans exactly `layers`."""
    block = BasicBlock(8, 8, 1, torch.nn.Identity(), layers=layers).eval()
    names = [name for name, _ in block.named_children()]
    assert names == [f"{p}{k}" for k in range(1, layers + 1) for p in ("conv", "bn")] + ["shortcut"]
    for m in block.modules():  # BN that is not the identity, so a misplaced ReLU shows
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight)
            torch.nn.init.normal_(m.bias)
    x = torch.randn(3, 8, 6, 6)
    expected = x
    for k in range(1, layers + 1):
        expected = getattr(block, f"bn{k}")(getattr(block, f"conv{k}")(expected))
        if k < layers:
            expected = torch.relu(expected)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(expected + x), atol=1e-6)


def test_block_layers_stride_on_the_first_conv() -> None:
    net = build_network("cifar", 20, "A", block_layers=3)
    first = net.stages[1][0]
    assert [getattr(first, f"conv{k}").stride for k in (1, 2, 3)] == [(2, 2), (1, 1), (1, 1)]


def test_bad_block_layers_combinations_name_what_works() -> None:
    with pytest.raises(
        ValueError, match=r"model\.block_layers=3 is not valid; valid: 1, 2 .*20, 38, 56, 74"
    ):
        build_network("cifar", 32, "A", block_layers=3)  # 2n = 10
    with pytest.raises(ValueError, match=r"model\.block_layers=4 is not valid; valid: 1, 2, 3"):
        build_network("cifar", 20, "A", block_layers=4)
    with pytest.raises(ValueError, match=r"block_layers=1 is not valid; valid: 2 .*cifar-family"):
        build_network("imagenet", 18, "B", block_layers=1)


def test_zero_init_residual_zeroes_every_last_bn() -> None:
    net = build_network("cifar", 20, "A", block_layers=3, zero_init_residual=True)
    for block in (m for m in net.modules() if isinstance(m, BasicBlock)):
        assert torch.all(block.bn3.weight == 0)
        assert torch.all(block.bn1.weight == 1) and torch.all(block.bn2.weight == 1)
    net = build_network("imagenet", 50, "B", zero_init_residual=True)
    for block in (m for m in net.modules() if isinstance(m, Bottleneck)):
        assert torch.all(block.bn3.weight == 0) and torch.all(block.bn2.weight == 1)


# --- ImageNet family ---------------------------------------------------------------------------

# Table 1 (counted from its architectures): option B, 1000 classes; equal to torchvision's models.
IMAGENET_PARAMS_B = {
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
    152: 60_192_808,
}


@pytest.mark.parametrize("depth", sorted(IMAGENET_PARAMS_B))
def test_imagenet_option_b_parameters_match_the_paper_and_torchvision(depth: int) -> None:
    with torch.device("meta"):  # counting only: no weights to initialise
        ours = build_network("imagenet", depth, "B", num_classes=1000)
        theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert n_params(ours) == n_params(theirs) == IMAGENET_PARAMS_B[depth]


@pytest.mark.parametrize(
    ("depth", "shortcut", "params"),
    [(18, "none", 11_515_688), (18, "A", 11_515_688), (34, "none", 21_623_848),
     (34, "A", 21_623_848), (34, "C", 22_716_840)],
)  # fmt: skip
def test_imagenet_plain_a_and_c_parameters(depth: int, shortcut: str, params: int) -> None:
    with torch.device("meta"):
        assert n_params(build_network("imagenet", depth, shortcut, num_classes=1000)) == params


def _randomise_batchnorm(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so a mismatch cannot hide."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) + 0.5
            m.bias.data = 0.2 * torch.randn(c, generator=g)
            m.running_mean = 0.2 * torch.randn(c, generator=g)
            m.running_var = torch.rand(c, generator=g) + 0.5


# torchvision's weights in our networks: the proof that option B is torchvision's architecture.
_TORCHVISION_RENAMES = (
    (re.compile(r"^conv1\."), "stem.0."),
    (re.compile(r"^bn1\."), "stem.1."),
    (re.compile(r"^layer(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}."),
    (re.compile(r"\.downsample\."), ".shortcut."),
)


def load_torchvision_state_dict(
    net: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Load a torchvision ``resnet18/34/50/101/152`` state dict into ``net``: an ImageNet net of
    the same depth, option B, and for 50-152 ``bottleneck_stride="3x3"``; every key and shape
    must match. Then ``net`` gives torchvision's outputs."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for pattern, repl in _TORCHVISION_RENAMES:
            key = pattern.sub(repl, key)
        renamed[key] = value
    ours = net.state_dict()
    missing = sorted(set(ours) - set(renamed))
    unexpected = sorted(set(renamed) - set(ours))
    if missing or unexpected:
        raise ValueError(
            "the torchvision state dict does not fit this network (it needs an ImageNet net of "
            "the same depth with shortcut B): "
            f"{len(missing)} keys missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}"
        )
    wrong = [
        f"{k}: {tuple(renamed[k].shape)} vs ours {tuple(v.shape)}"
        for k, v in ours.items()
        if renamed[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(
            f"the torchvision state dict has {len(wrong)} tensors of the wrong shape (widths, "
            f"num_classes or in_channels differ), e.g. {'; '.join(wrong[:3])}"
        )
    if any(isinstance(m, Bottleneck) and m.stride_on != "3x3" for m in net.modules()):
        raise ValueError(
            "torchvision's bottleneck nets are v1.5 (stride on the 3x3 conv): their weights load "
            "only into a net built with model.bottleneck_stride=3x3 (build_network(..., "
            "bottleneck_stride='3x3')); this net has the paper's stride on the 1x1 "
            "(model.bottleneck_stride=1x1): the same shapes, a different function"
        )
    net.load_state_dict(renamed, strict=True)


def _torchvision_pair(depth: int, stride: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(depth)
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    _randomise_batchnorm(theirs, depth)
    ours = build_network("imagenet", depth, "B", num_classes=1000, bottleneck_stride=stride)
    load_torchvision_state_dict(ours, theirs.state_dict())
    return ours.eval(), theirs.eval()


@pytest.mark.parametrize(
    ("depth", "stride"), [(18, "1x1"), (34, "1x1"), (50, "3x3"), (101, "3x3"), (152, "3x3")]
)
def test_torchvision_weights_give_torchvision_outputs(depth: int, stride: str) -> None:
    ours, theirs = _torchvision_pair(depth, stride)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(x)
        assert expected.std() > 1e-3  # a signal, not a constant
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_paper_bottleneck_stride_differs_from_torchvision_v15() -> None:
    """Same weights, stride on the 1×1 (the paper) instead of the 3×3: same parameters,
    a different function."""
    v15, theirs = _torchvision_pair(50, "3x3")
    ours = build_network("imagenet", 50, "B", num_classes=1000).eval()
    ours.load_state_dict(v15.state_dict())  # the same keys and shapes
    assert n_params(ours) == n_params(theirs)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(ours(x), theirs(x), rtol=1e-2, atol=1e-3)
    down = ours.stages[1][0]
    assert (down.conv1.stride, down.conv2.stride) == ((2, 2), (1, 1))
    v15 = build_network("imagenet", 50, "B", bottleneck_stride="3x3").stages[1][0]
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))


def test_bottleneck_registers_each_conv_before_its_bn() -> None:
    block = build_network("imagenet", 50, "B").stages[0][0]
    assert isinstance(block, Bottleneck)
    names = [name for name, _ in block.named_children()]
    assert names == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "shortcut"]
    assert (block.conv1.kernel_size, block.conv2.kernel_size, block.conv3.kernel_size) == (
        (1, 1), (3, 3), (1, 1),
    )  # fmt: skip
    assert block.conv3.out_channels == 4 * block.conv2.out_channels == 256


def test_imagenet_stem_and_stage_shapes() -> None:
    net = build_network("imagenet", 18, "A", num_classes=7, in_channels=1)
    conv, pool = net.stem[0], net.stem[3]
    assert (conv.kernel_size, conv.stride, conv.padding, conv.bias) == (
        (7, 7),
        (2, 2),
        (3, 3),
        None,
    )
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    x = net.stem(torch.randn(2, 1, 224, 224))
    assert x.shape == (2, 64, 56, 56)
    sizes = []
    for stage in net.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize("shortcut", ["none", "A", "C"])
def test_bottleneck_nets_take_every_shortcut(shortcut: str) -> None:
    net = build_network("imagenet", 50, shortcut, num_classes=5)
    first = net.stages[0][0].shortcut
    if shortcut == "A":  # 64 -> 256 channels at stride 1: zero padding, no parameters
        assert isinstance(first, ZeroPadShortcut) and first.extra_channels == 192
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_imagenet_bad_depth_stride_and_widths_name_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"model\.depth=20 is not valid; valid: 18, 34, 50, 101, 152"
    ):
        build_network("imagenet", 20, "B")
    with pytest.raises(
        ValueError, match=r"model\.bottleneck_stride='2x2' is not valid; valid: 1x1, 3x3"
    ):
        build_network("imagenet", 50, "B", bottleneck_stride="2x2")
    with pytest.raises(
        ValueError, match=r"model\.widths=\[16, 32, 64\] is not valid; valid: 4 widths, one per"
    ):
        build_network("imagenet", 18, "B", widths=[16, 32, 64])
    with pytest.raises(
        ValueError, match=r"model\.widths\[1\]=0 is not valid; valid: an integer >= 1"
    ):
        build_network("cifar", 20, "A", widths=[16, 0, 64])
    # a net without bottleneck blocks has no 3x3 placement: a name like resnet-20A-v1.5 would lie
    for family, depth in (("cifar", 20), ("imagenet", 34)):
        with pytest.raises(
            ValueError, match=r"model\.bottleneck_stride='3x3' is not valid; valid: 1x1 \("
        ):
            build_network(family, depth, "A", bottleneck_stride="3x3")


def test_torchvision_state_dict_into_a_wrong_network_says_why() -> None:
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(
        ValueError,
        match=r"0 keys missing.*unexpected, e\.g\. \['stages\.1\.0\.shortcut\.0\.weight'",
    ):
        load_torchvision_state_dict(build_network("imagenet", 18, "A", num_classes=1000), theirs)
    with pytest.raises(
        ValueError, match=r"wrong shape.*fc\.weight: \(1000, 512\) vs ours \(10, 512\)"
    ):
        load_torchvision_state_dict(build_network("imagenet", 18, "B", num_classes=10), theirs)


@pytest.mark.parametrize("depth", [50, 101])
def test_torchvision_bottleneck_weights_load_only_into_v15_nets(depth: int) -> None:
    """torchvision's ResNet-50/101/152 put the stride on the 3×3: the paper's placement has the
    same shapes but another function, so its weights are refused there (and load, giving
    torchvision's outputs, with bottleneck_stride="3x3": test_torchvision_weights_give_...)."""
    with torch.device("meta"):  # the check needs shapes only
        theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
        paper = build_network("imagenet", depth, "B", num_classes=1000)
    with pytest.raises(
        ValueError, match=r"load only into a net built with model\.bottleneck_stride=3x3"
    ):
        load_torchvision_state_dict(paper, theirs)


def test_extended_network_names() -> None:
    assert network_name(56, "A", 1) == "resnet-56A-1layer"
    assert network_name(56, "none", "3") == "plain-56-3layer"
    assert network_name(56, "A", 2) == "resnet-56A"
    assert network_name(50, "B", 2, "3x3") == "resnet-50B-v1.5"
    assert network_name(50, "B", bottleneck_stride="1x1") == "resnet-50B"
