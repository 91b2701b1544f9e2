"""The fast path changes speed, not the training: the same augmentation distribution as the
plain per-image path, the same losses in fp32, batch norm in fp32 under bf16, bit-identical
activation checkpointing, and no host-device sync in a training step between logging steps."""

from __future__ import annotations

import copy
import csv
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from reslab.config import instantiate
from reslab.data.augment import crop_flip_draws, subtract_mean_crop_flip
from reslab.module import FP32BatchNorm2d, batchnorm_in_fp32
from reslab.networks import build_network
from reslab.train import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu import bytes_kept_for_backward

SIDE, PAD = 32, 4
OFFSETS = (2 * PAD + 1) ** 2  # 81 crop positions


def coded_image() -> torch.Tensor:
    """One 1×32×32 image whose pixel (r, c) holds r*32 + c + 1: every pixel is unique and
    nonzero, so a crop of it (zero-padded) tells its own offset and flip."""
    return (torch.arange(SIDE * SIDE, dtype=torch.float32) + 1).view(1, SIDE, SIDE)


def decode(crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset index top*9 + left in [0, 81), flipped) of each N×1×32×32 crop of coded_image."""
    centre = crops[:, 0, 16, 16].long() - 1
    right = crops[:, 0, 16, 17].long() - 1
    flipped = right < centre
    row, col = centre // SIDE, centre % SIDE
    top = row + PAD - 16
    left = torch.where(flipped, col + PAD - 15, col + PAD - 16)
    assert bool(((top >= 0) & (top <= 2 * PAD) & (left >= 0) & (left <= 2 * PAD)).all())
    return top * (2 * PAD + 1) + left, flipped


def chi_square(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson's statistic that two histograms come from one distribution (homogeneity)."""
    total = a + b
    ea, eb = total * a.sum() / total.sum(), total * b.sum() / total.sum()
    return float(((a - ea) ** 2 / ea + (b - eb) ** 2 / eb).sum())


def test_batched_augmentation_has_the_per_image_paths_distribution() -> None:
    """reslab's batched crop-and-flip against torchvision's RandomCrop(32, padding=4) +
    RandomHorizontalFlip, image by image: crop offsets uniform over the 81 positions and flips
    at rate 1/2 in both, and the two histograms indistinguishable (chi-square, 80 dof). The
    draws are training's: the hash of the seed, the iteration and each image's place."""
    n = 8100
    image = coded_image()
    zero = torch.zeros(image.shape)
    draws = torch.cat([crop_flip_draws(0, i, 1, torch.arange(n // 10), PAD)[0] for i in range(10)])
    batch = subtract_mean_crop_flip(image.expand(n, -1, -1, -1), zero, PAD, True, draws, scale=1.0)
    fast_offsets, fast_flips = decode(batch)
    plain = transforms.Compose(
        [transforms.RandomCrop(SIDE, padding=PAD), transforms.RandomHorizontalFlip()]
    )
    torch.manual_seed(0)
    plain_offsets, plain_flips = decode(torch.stack([plain(image) for _ in range(n)]))

    fast_hist = torch.bincount(fast_offsets, minlength=OFFSETS).double()
    plain_hist = torch.bincount(plain_offsets, minlength=OFFSETS).double()
    uniform = torch.full((OFFSETS,), n / OFFSETS, dtype=torch.float64)
    # 99.9% quantile of chi-square with 80 degrees of freedom: 124.8
    for hist in (fast_hist, plain_hist):
        assert float(((hist - uniform) ** 2 / uniform).sum()) < 124.8
    assert chi_square(fast_hist, plain_hist) < 124.8
    for flips in (fast_flips, plain_flips):
        assert abs(flips.double().mean().item() - 0.5) < 4 * 0.5 / n**0.5
    assert abs(fast_flips.double().mean() - plain_flips.double().mean()).item() < 0.03


def smoke_cfg(hydra_cfg, tmp_path: Path, data_dir: Path, *overrides: str):
    """A 4-iteration run of ResNet-8 on the tiny CIFAR-10 files, logged to metrics.csv only."""
    return hydra_cfg(
        tmp_path,
        ["model.depth=8", "data=cifar10", "debug=smoke", f"data.data_dir={data_dir}",
         "data.download=false", "logger=csv", *overrides],
    )  # fmt: skip


def train_losses(tmp_path: Path, hydra_cfg, data_dir: Path, overrides: list[str]) -> list[float]:
    """``train/loss`` of every iteration of a 4-iteration CIFAR-10 run (fp32, CPU)."""
    cfg = smoke_cfg(
        hydra_cfg, tmp_path, data_dir, "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=0", "trainer.limit_test_batches=0", *overrides,
    )  # fmt: skip
    train(cfg)
    with open(tmp_path / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow  # torch.compile on a CPU: about 30 s
def test_fast_options_give_the_plain_paths_losses_in_fp32(
    tmp_path: Path, hydra_cfg, tiny_cifar10: Path
) -> None:
    plain = train_losses(tmp_path / "plain", hydra_cfg, tiny_cifar10, ["speed=eager"])
    fast = train_losses(
        tmp_path / "fast", hydra_cfg, tiny_cifar10,
        # everything but bf16 (same arithmetic) and fusing (test_fused.py: it logs every
        # iteration here)
        ["speed=fast", "trainer.precision=32-true", "module.fused_iterations=1"],
    )  # fmt: skip
    assert len(plain) == 4
    assert fast == pytest.approx(plain, rel=1e-4)
    assert plain[0] != plain[-1]  # it trained


def test_speed_presets_set_each_option(hydra_cfg, tmp_path: Path) -> None:
    fast = hydra_cfg(tmp_path / "fast", ["speed=fast"])
    assert fast.module.channels_last and fast.module.compile and fast.module.cuda_graphs
    assert fast.module.batchnorm_fp32 and fast.module.fused_iterations == 10
    assert fast.trainer.precision == "bf16-mixed" and fast.trainer.benchmark is True
    eager = hydra_cfg(tmp_path / "eager", [])
    assert not (eager.module.channels_last or eager.module.compile or eager.module.cuda_graphs)
    assert eager.module.fused_iterations == 1
    assert eager.trainer.precision == "32-true" and eager.trainer.benchmark is None


def test_batchnorm_computes_in_fp32_under_bf16_autocast() -> None:
    net = build_network("cifar", 8, "A")
    assert batchnorm_in_fp32(net) == 7  # the stem's BN and 2 per block, 3 blocks
    seen: list[tuple[torch.dtype, torch.dtype]] = []
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert type(m) is FP32BatchNorm2d
            m.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype)))
    x = torch.randn(4, 3, 32, 32)
    reference = build_network("cifar", 8, "A")
    reference.load_state_dict(net.state_dict())  # the state dict is unchanged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
    assert seen and all(i == torch.bfloat16 and o == torch.float32 for i, o in seen)
    assert all(b.dtype in (torch.float32, torch.int64) for b in net.buffers())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    # bf16 rounding only: close to the fp32 network
    assert torch.allclose(logits.float(), reference(x), atol=0.1, rtol=0.05)
    seen.clear()
    net(x)  # outside autocast: plain BatchNorm2d
    assert all(i == o == torch.float32 for i, o in seen)


def test_bf16_mixed_run_puts_batchnorm_in_fp32(
    tmp_path: Path, hydra_cfg, tiny_cifar10: Path
) -> None:
    cfg = smoke_cfg(hydra_cfg, tmp_path, tiny_cifar10, "trainer.precision=bf16-mixed")
    assert train(cfg) == train(cfg)  # finite, and a repeat gives the same number
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = instantiate(cfg.model, num_classes=10, in_channels=3)
    module = instantiate(cfg.module, net=net)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], max_steps=1)
    trainer.fit(module, datamodule=datamodule)
    assert all(
        type(m) is FP32BatchNorm2d for m in module.net.modules() if isinstance(m, nn.BatchNorm2d)
    )


def test_cuda_graphs_on_a_cpu_train_without_them_and_say_so(
    tmp_path: Path, hydra_cfg, tiny_cifar10: Path
) -> None:
    cfg = smoke_cfg(hydra_cfg, tmp_path, tiny_cifar10, "module.cuda_graphs=true")
    with pytest.warns(UserWarning, match="cuda_graphs needs a CUDA device"):
        train(cfg)


@pytest.mark.parametrize(
    ("family", "depth", "shortcut", "size"),
    [("cifar", 20, "A", 32), ("cifar", 14, "none", 32), ("imagenet", 50, "B", 64)],
)
def test_activation_checkpointing_is_bit_identical(
    family: str, depth: int, shortcut: str, size: int
) -> None:
    """Same loss, gradients and BN running statistics (the recomputation must not update them
    a second time), to the bit."""
    torch.manual_seed(0)
    plain = build_network(family, depth, shortcut, num_classes=10)
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing = True
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))
    for _ in range(2):
        losses = []
        for net in (plain, checkpointed):
            net.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            losses.append(loss)
        assert torch.equal(*losses)
        for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)
        for (name, a), (_, b) in zip(
            plain.named_buffers(), checkpointed.named_buffers(), strict=True
        ):
            assert torch.equal(a, b), name
    assert int(dict(checkpointed.named_buffers())["stem.1.num_batches_tracked"]) == 2


def test_activation_checkpointing_keeps_less_for_backward() -> None:
    """The tensors kept for the backward pass of ResNet-56: one per block with checkpointing,
    several per layer without."""

    def saved_bytes(net: nn.Module) -> int:
        return bytes_kept_for_backward(net, torch.randn(8, 3, 32, 32))

    net = build_network("cifar", 56, "A")
    full = saved_bytes(net)
    net.activation_checkpointing = True
    assert saved_bytes(net) < full / 4


def test_no_host_sync_in_a_training_step_between_logging_steps(
    tmp_path: Path, hydra_cfg, tiny_cifar10: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read of a tensor's value on the host (item, float, bool, tolist: a device sync on
    a GPU) is counted; iterations that do not log read none, from one batch to the next. (A
    checkpoint reads once, whether its network is finite, where saving it syncs anyway: here
    the only one is at the end.)"""
    reads = [0]
    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, _original=original) -> object:
            reads[0] += 1
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)

    import lightning as L

    class Count(L.Callback):
        """Reads between the end of one training batch and the end of the next."""

        def __init__(self) -> None:
            self.per_step: dict[int, int] = {}
            self.last = 0

        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            self.per_step[trainer.global_step] = reads[0] - self.last
            self.last = reads[0]

    cfg = smoke_cfg(
        hydra_cfg, tmp_path, tiny_cifar10,
        "optim.max_steps=8", "trainer.log_every_n_steps=4", "trainer.val_check_interval=8",
        "callbacks.checkpoint.every_n_train_steps=8",
    )  # fmt: skip
    counter = Count()
    with monkeypatch.context() as m:
        m.setattr("reslab.train.instantiate", _adding(counter))
        train(cfg)
    # Iteration 4 logs; the loggers write its values after its batch ends (in 5's interval).
    quiet = {step: n for step, n in counter.per_step.items() if step % 4 not in (0, 1)}
    assert sorted(quiet) == [2, 3, 6, 7] and set(quiet.values()) == {0}, counter.per_step
    assert counter.per_step[4] + counter.per_step[5] > 0  # the counting works


def _adding(callback: object):
    """reslab.train.instantiate that also gives the Trainer ``callback``."""
    from reslab.config import instantiate as real

    def make(node: object, **kwargs: object) -> object:
        if "callbacks" in kwargs:
            kwargs["callbacks"] = [*kwargs["callbacks"], callback]
        return real(node, **kwargs)

    return make


def test_resnet_1202_at_batch_128_fits_16_gb_only_with_checkpointing() -> None:
    """Counted on the meta device: without checkpointing the activations alone pass 16 GiB;
    with it they take under 3 GiB (the weights, gradients and momentum add 0.23 GiB)."""
    kept = {}
    for checkpointing in (False, True):
        with torch.device("meta"):
            net = build_network("cifar", 1202, "A", activation_checkpointing=checkpointing)
        images = torch.empty(128, 3, 32, 32, device="meta")
        kept[checkpointing] = bytes_kept_for_backward(net, images) / 2**30
    assert kept[False] > 16 and kept[True] < 3, kept
