import copy
import pickle

import pytest
import torch

from reslab.networks import (
    BasicBlock,
    ZeroPadShortcut,
    build_network,
    cifar_blocks_per_stage,
    network_name,
)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# PAPER.md: option A or plain, 10 classes (= 97,216 n - 21,926).
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
    """Option A is a module, not a lambda: checkpoints and DDP can pickle it."""
    for shortcut in ("none", "A", "B", "C"):
        net = build_network("cifar", 8, shortcut)
        clone = pickle.loads(pickle.dumps(net))
        copy.deepcopy(net)
        x = torch.randn(2, 3, 32, 32)
        net.eval(), clone.eval()
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
    with pytest.raises(ValueError, match=rf"CIFAR depth {depth} .*valid depths are 8, 14, 20"):
        build_network("cifar", depth, "A")


def test_unknown_shortcut_and_family_name_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown shortcut 'D'; valid choices are none, A, B, C"):
        build_network("cifar", 20, "D")
    with pytest.raises(ValueError, match=r"unknown network family 'vgg'"):
        build_network("vgg", 20, "A")


def test_network_names() -> None:
    assert network_name(56, "none") == "plain-56"
    assert network_name(56, "A") == "resnet-56A"
    assert network_name(110, "B") == "resnet-110B"
