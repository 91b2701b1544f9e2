"""Augmented images per second: reslab's batched in-memory pipeline against torchvision's.

reslab: one uint8 tensor (N, 3, 32, 32) in memory; per batch one index of a random permutation
and ``subtract_mean_crop_flip`` on the whole batch (the per-pixel mean subtraction, zero padding,
random crop and flip of every image, as the DataModule does them in training), in the main
process.
torchvision: a Dataset over uint8 HWC numpy images turned into PIL images one at a time (as
torchvision's CIFAR10 does), ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` +
``ToTensor`` + ``Normalize``, through a shuffling ``DataLoader`` with 2 workers.

Both are compared with the training throughput of ResNet-20 (the plain loop of
``throughput.py``, measured briefly here unless ``--train-img-s`` gives it). The first batch of
each round (worker start-up) is excluded; each figure is the median over rounds.

    python benchmarks/data.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from reslab.data.augment import subtract_mean_crop_flip

NUM_IMAGES = 50_000  # CIFAR-10's training set
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's, for Normalize


class PILImages(Dataset):
    """HWC uint8 images as torchvision's CIFAR10 keeps them; PIL per image, then ``transform``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: object) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        return self.transform(image), int(self.labels[index])


def reslab_round(images: torch.Tensor, mean: torch.Tensor, batch_size: int, batches: int) -> float:
    """Seconds for ``batches`` augmented batches of reslab's pipeline."""
    start = time.perf_counter()
    order = torch.randperm(len(images))
    whole = len(images) - len(images) % batch_size  # full batches only, as drop_last does
    for i in range(batches):
        start_at = (i * batch_size) % whole
        index = order[start_at : start_at + batch_size]
        batch = subtract_mean_crop_flip(images[index], mean)
    assert batch.shape == (batch_size, 3, 32, 32)
    return time.perf_counter() - start


def torchvision_round(dataset: PILImages, batch_size: int, batches: int, workers: int) -> float:
    """Seconds for ``batches`` batches after the first (worker start-up excluded)."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch, _ = next(iterator)
    assert batch.shape == (batch_size, 3, 32, 32)
    seconds = time.perf_counter() - start
    del iterator  # stops the workers
    return seconds


def train_img_s(batch_size: int, steps: int) -> float:
    """ResNet-20's training images/s in the plain loop of throughput.py (1 warm-up step)."""
    from throughput import PlainLoop  # benchmarks/ is on sys.path when run as a script

    images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (4096,))
    loop = PlainLoop(
        20, images, labels, images.float().mean(0), batch_size, torch.device("cpu"),
        channels_last=False, total_steps=steps + 1,
    )  # fmt: skip
    loop.run(1)
    return steps * batch_size / loop.run(steps)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=100, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="torchvision DataLoader workers")
    parser.add_argument("--train-steps", type=int, default=5, help="timed ResNet-20 iterations")
    parser.add_argument(
        "--train-img-s", type=float, default=None, help="ResNet-20 training img/s (skip measuring)"
    )
    args = parser.parse_args(argv)
    for key in ("batch_size", "batches", "rounds", "train_steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    most = NUM_IMAGES // args.batch_size - 1  # one epoch of the DataLoader, less its first batch
    if args.batches > most:
        parser.error(f"--batches {args.batches} is more than one epoch; valid: 1 to {most}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=120)
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (NUM_IMAGES, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, NUM_IMAGES)
    chw = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()  # reslab's layout
    mean = chw.float().mean(0)
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = PILImages(hwc, labels, transform)

    reslab_round(chw, mean, args.batch_size, 2)  # warm-up, not timed
    reslab_s, torchvision_s = [], []
    for _ in range(args.rounds):  # interleaved
        reslab_s.append(reslab_round(chw, mean, args.batch_size, args.batches))
        torchvision_s.append(
            torchvision_round(dataset, args.batch_size, args.batches, args.workers)
        )
    images = args.batches * args.batch_size
    reslab_rate = images / statistics.median(reslab_s)
    torchvision_rate = images / statistics.median(torchvision_s)
    if args.train_img_s is None:
        train_rate, train_source = train_img_s(args.batch_size, args.train_steps), "measured"
    else:
        train_rate, train_source = args.train_img_s, "given"

    console.print(
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, {args.rounds} rounds x "
        f"{args.batches} batches, median over rounds; torchvision with {args.workers} workers"
    )
    table = Table(title="Augmented images per second")
    for column in ("pipeline", "img/s", "ms/batch", "reslab / this"):
        table.add_column(column, justify="right")
    rows = (
        ("reslab (uint8 tensor, batched ops)", reslab_rate),
        (f"torchvision (PIL, DataLoader, {args.workers} workers)", torchvision_rate),
        (f"ResNet-20 training ({train_source}, plain loop)", train_rate),
    )
    for name, rate in rows:
        table.add_row(
            name,
            f"{rate:.0f}",
            f"{1000 * args.batch_size / rate:.1f}",
            f"{reslab_rate / rate:.1f}x",
        )
    console.print(table)
    vs_torchvision, vs_train = reslab_rate / torchvision_rate, reslab_rate / train_rate
    console.print(
        f"reslab/torchvision {vs_torchvision:.1f}x (target >= 10x: "
        f"{'met' if vs_torchvision >= 10 else 'missed'}); reslab/ResNet-20 training "
        f"{vs_train:.1f}x (target >= 20x: {'met' if vs_train >= 20 else 'missed'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
