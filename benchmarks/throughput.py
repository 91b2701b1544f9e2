"""Training throughput of CIFAR ResNets through reslab's Trainer path against a plain PyTorch loop.

Both paths train the same network (``build_network("cifar", depth, "A")``) with the same
optimizer (SGD lr 0.1, momentum 0.9, weight decay 1e-4, MultiStepLR stepped every iteration),
on the same synthetic CIFAR-shaped uint8 images with the same augmentation (per-pixel mean
subtraction, pad-4 random crop, flip) and the same error bookkeeping (loss and error summed on
the device every step, read every ``log_every_n_steps``).

The rounds are interleaved in one process inside one ``trainer.fit``: a callback pauses the
Trainer after every N reslab steps and runs N plain steps, so both paths see the same machine
state. Warm-up steps of each path are excluded; each path's figure is the median over rounds.

    python benchmarks/throughput.py                       # ResNet-20, 56, 110 on the CPU
    python benchmarks/throughput.py --channels-last --device cuda
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console
from rich.table import Table

from reslab.data.augment import subtract_mean_crop_flip
from reslab.data.synthetic import SyntheticDataModule
from reslab.module import Classifier
from reslab.networks import build_network

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4  # conf/optim/paper_cifar.yaml
MILESTONES, GAMMA = [32000, 48000], 0.1
LOG_EVERY_N_STEPS = 50  # conf/trainer/default.yaml
NUM_TRAIN = 8192  # synthetic training images: 64 batches of 128 per epoch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_optimizer(net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def make_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=MILESTONES, gamma=GAMMA)


class PlainLoop:
    """The minimal loop: index a batch of the uint8 tensor, move it to the device, subtract the
    mean, crop and flip, forward, loss, backward, step, schedule; loss and error are summed on
    the device and read every ``LOG_EVERY_N_STEPS`` (and on the last step), as reslab does."""

    def __init__(
        self,
        depth: int,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        batch_size: int,
        device: torch.device,
        channels_last: bool,
        total_steps: int,
    ) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.device, self.channels_last, self.total_steps = device, channels_last, total_steps
        self.mean = mean.to(device)
        self.net = build_network("cifar", depth, "A").to(device).train()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.net)
        self.scheduler = make_scheduler(self.optimizer)
        self.order = torch.randperm(len(labels))
        self.position, self.iteration = 0, 0
        self.sums = torch.zeros(3, device=device)  # loss * images, wrong images * 100, images
        self.logged: list[tuple[float, float]] = []

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.batch_size > len(self.order):
            self.order, self.position = torch.randperm(len(self.labels)), 0
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.images[index], self.labels[index]

    def step(self) -> None:
        images, labels = self.next_batch()
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        images = subtract_mean_crop_flip(images, self.mean)  # as the DataModule does
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.iteration += 1
        wrong = (logits.detach().argmax(dim=1) != labels).float().sum() * 100.0
        n = float(labels.numel())
        self.sums += torch.stack([loss.detach() * n, wrong, wrong.new_tensor(n)])
        if self.iteration % LOG_EVERY_N_STEPS == 0 or self.iteration == self.total_steps:
            loss_mean, error = (self.sums[:2] / self.sums[2]).tolist()
            self.logged.append((loss_mean, error))
            self.sums.zero_()

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` iterations."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return time.perf_counter() - start


class Interleave(L.Callback):
    """Times reslab's rounds between training-batch ends and runs a plain round after each."""

    def __init__(
        self, warmup: int, steps: int, plain_round: Callable[[int], float], device: torch.device
    ) -> None:
        self.warmup, self.steps, self.plain_round, self.device = warmup, steps, plain_round, device
        self.reslab_seconds: list[float] = []
        self.plain_seconds: list[float] = []
        self.round_start: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        done = trainer.global_step
        if done < self.warmup or (done - self.warmup) % self.steps:
            return
        sync(self.device)
        now = time.perf_counter()
        if done == self.warmup:
            self.plain_round(self.warmup)  # the plain loop's warm-up, not timed
        else:
            self.reslab_seconds.append(now - self.round_start)
            self.plain_seconds.append(self.plain_round(self.steps))
        sync(self.device)
        self.round_start = time.perf_counter()


def measure_depth(
    depth: int, args: argparse.Namespace, device: torch.device, log_dir: str
) -> tuple[list[float], list[float]]:
    """Seconds per round of each path: (reslab, plain)."""
    torch.manual_seed(0)
    datamodule = SyntheticDataModule(
        num_train=NUM_TRAIN, num_test=args.batch_size, batch_size=args.batch_size, val_size=0
    )
    datamodule.setup("fit")
    splits = datamodule.splits
    total = args.warmup + args.rounds * args.steps
    plain = PlainLoop(
        depth, splits.train_images, splits.train_labels, datamodule.mean, args.batch_size,
        device, args.channels_last, total,
    )  # fmt: skip
    module = Classifier(
        build_network("cifar", depth, "A"),
        optimizer=lambda params: torch.optim.SGD(
            params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        ),
        scheduler=make_scheduler,
        channels_last=args.channels_last,
    )
    interleave = Interleave(args.warmup, args.steps, plain.run, device)
    # conf/trainer/default.yaml with conf/trainer/cpu.yaml or gpu.yaml; a CSV logger, and no
    # checkpointing and no progress bar (the benchmark's choice, not the project's default).
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        default_root_dir=log_dir,
        max_steps=total,
        max_epochs=-1,
        check_val_every_n_epoch=None,
        val_check_interval=2000,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        num_sanity_val_steps=0,
        precision="32-true",
        deterministic=False,
        logger=CSVLogger(log_dir, name=f"resnet{depth}"),
        callbacks=[interleave],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return interleave.reslab_seconds, interleave.plain_seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110])
    parser.add_argument("--steps", type=int, default=8, help="iterations per round and path")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per path")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--channels-last", action="store_true", help="NHWC on both paths")
    args = parser.parse_args(argv)
    for key in ("steps", "rounds", "warmup", "batch_size"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; valid: cpu")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*LeafSpec.*", ".*across ranks is zero.*"):
        warnings.filterwarnings("ignore", message=message)
    console = Console(width=120)
    console.print(
        f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"channels_last {args.channels_last}, warm-up {args.warmup} + {args.rounds} rounds x "
        f"{args.steps} iterations per path, median over rounds"
    )
    table = Table(title="Training throughput: reslab Trainer vs plain PyTorch loop")
    for column in (
        "net", "reslab img/s", "plain img/s", "reslab/plain", "reslab ms/it", "plain ms/it",
        "reslab ms/it/layer", "plain ms/it/layer",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    ratios = []
    with tempfile.TemporaryDirectory() as log_dir:
        for depth in args.depths:
            reslab, plain = measure_depth(depth, args, device, log_dir)
            reslab_s, plain_s = statistics.median(reslab), statistics.median(plain)
            images = args.steps * args.batch_size
            ratio = plain_s / reslab_s
            ratios.append(ratio)
            table.add_row(
                f"ResNet-{depth}",
                f"{images / reslab_s:.1f}",
                f"{images / plain_s:.1f}",
                f"{ratio:.3f}",
                f"{1000 * reslab_s / args.steps:.1f}",
                f"{1000 * plain_s / args.steps:.1f}",
                f"{1000 * reslab_s / args.steps / depth:.2f}",
                f"{1000 * plain_s / args.steps / depth:.2f}",
            )
    console.print(table)
    verdict = "met" if min(ratios) >= 0.95 else "missed"
    console.print(
        f"target reslab/plain >= 0.95 at every depth: {verdict} (lowest {min(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
