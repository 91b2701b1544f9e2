"""Host time per iteration of reslab's training path against a hand-written loop of the same work.

Where compute vanishes (a tiny net, small batches, one CPU thread) what is left is the framework's
own time per iteration: Lightning's loop, hooks and logging, reslab's module and DataModule. Two
parts:

1. **In-process**: the real ``reslab.fused.FusedClassifier`` and ``SyntheticDataModule`` in a
   ``lightning.Trainer`` with the settings of ``conf/trainer`` (``_base.yaml`` + ``cpu.yaml``),
   reslab's CSV logger, its divergence guard and signal stop (no checkpointing, no progress bar:
   part 2 has them), against a hand-written loop of the same work: index a batch of the uint8
   training tensor, ``subtract_mean_crop_flip``, forward, cross-entropy, backward, SGD step
   (lr 0.1, momentum 0.9, weight decay 1e-4), ``MultiStepLR.step()`` every iteration, loss and
   error summed on the device and read every 50 iterations. The rounds are interleaved in one
   process inside one ``trainer.fit`` (as ``throughput.py`` does): a callback stops reslab's
   clock every N iterations and runs N hand iterations. Nets: ``tiny`` (a 1x1 convolution, batch
   norm, ReLU, global average pool, linear: compute vanishes), ResNet-8 and ResNet-20
   (``build_network("cifar", depth, "A")``), at batch 8 and 128, each with
   ``fused_iterations=1`` and ``10`` (one Lightning step runs that many optimizer iterations).
2. **Through reslab-train**: ``python -m reslab.cli`` (every default callback: checkpoints every
   1000 iterations, the progress bar, the CSV logger) on a tiny ResNet-8 with a timing callback
   (``benchmarks/iteration_timer.py``, added as ``+callbacks.timer``) that records the time and
   the global step at every training-batch end; the hand loop of the same work runs in this
   process between the runs.

    python benchmarks/overhead.py             # both parts, about 4 minutes on 2 CPU cores
    python benchmarks/overhead.py --tiny      # a few seconds: tiny net and ResNet-8, batch 8
    python benchmarks/overhead.py --profile   # + cProfile of reslab's path, per iteration
"""

from __future__ import annotations

import argparse
import cProfile
import ctypes
import ctypes.util
import inspect
import json
import logging
import math
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from reslab.callbacks import DivergenceGuard
from reslab.checkpoints import AtomicCheckpointIO
from reslab.data.augment import subtract_mean_crop_flip
from reslab.data.synthetic import SyntheticDataModule
from reslab.fused import FusedClassifier, trainer
from reslab.loggers import AppendingCSVLogger
from reslab.networks import build_network
from reslab.signals import StopOnSignal

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
from iteration_timer import per_iteration  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4  # conf/optim/paper_cifar.yaml
MILESTONES, GAMMA = [32000, 48000], 0.1
LOG_EVERY_N_STEPS = 50  # conf/trainer/_base.yaml
VAL_CHECK_INTERVAL = 2000
NUM_CLASSES = 10
NUM_TRAIN = 8192  # synthetic training images (an epoch: 1024 batches of 8, 64 of 128)
FUSED = (1, 10)  # the reslab settings: module.fused_iterations
TABLE_TITLE = "Host time per iteration: reslab against a hand-written loop"
TRAIN_TITLE = "Time per iteration through reslab-train (tiny ResNet-8)"
PROFILE_FIELDS = "cumulative µs/it, own µs/it, calls/it, function"

# Part 2: a tiny ResNet-8 on tiny images, through the command line (the settings).
TRAIN_DEPTH, TRAIN_WIDTHS, TRAIN_IMAGE, TRAIN_CHANNELS, TRAIN_BATCH = 8, (4, 4, 4), 8, 1, 4
TRAIN_OVERRIDES = [
    f"model.depth={TRAIN_DEPTH}",
    f"model.widths=[{','.join(map(str, TRAIN_WIDTHS))}]",
    "data=synthetic",
    f"data.image_size={TRAIN_IMAGE}",
    f"data.channels={TRAIN_CHANNELS}",
    f"data.batch_size={TRAIN_BATCH}",
    "logger=csv",
]


# glibc's malloc: blocks above the mmap threshold are mapped afresh for each allocation, and the
# heap's free top is given back above the trim threshold; either way the next iteration's
# activations fault their pages in again (thousands of page faults per iteration at batch 128).
# --keep-memory raises both, here (mallopt) and in reslab-train (its environment variables).
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 2**20, 2**30  # 32 MiB: the most glibc takes for the first
KEEP_MEMORY_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}


def keep_memory() -> None:
    """Makes this process's glibc malloc keep freed memory (see ``KEEP_MEMORY_ENV``)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    if not (
        libc.mallopt(m_mmap_threshold, MMAP_THRESHOLD)
        and libc.mallopt(m_trim_threshold, TRIM_THRESHOLD)
    ):
        raise RuntimeError("--keep-memory: glibc's mallopt refused the thresholds")


# --- the nets -------------------------------------------------------------------------------
def tiny_net(in_channels: int, width: int = 16, num_classes: int = NUM_CLASSES) -> nn.Module:
    """A net whose compute vanishes: 1x1 conv, batch norm, ReLU, global average pool, linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def make_net(name: str, in_channels: int, widths: tuple[int, ...] | None = None) -> nn.Module:
    """``tiny``, or ``resnet-<depth>``: the CIFAR ResNet with option A shortcuts."""
    if name == "tiny":
        return tiny_net(in_channels)
    depth = int(name.removeprefix("resnet-"))
    options = {"widths": list(widths)} if widths else {}
    return build_network("cifar", depth, "A", in_channels=in_channels, **options)


def net_label(name: str) -> str:
    """The name in the table: ``tiny``, ``ResNet-8``."""
    return "tiny" if name == "tiny" else f"ResNet-{name.removeprefix('resnet-')}"


def make_optimizer(params: Any) -> torch.optim.Optimizer:
    """SGD as conf/optim/paper_cifar.yaml has it."""
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def make_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.MultiStepLR:
    """The paper's schedule (lr / 10 at 32k and 48k iterations), stepped every iteration."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=MILESTONES, gamma=GAMMA)


# --- the hand-written loop ------------------------------------------------------------------
class HandLoop:
    """The same work as reslab's path, written out: index a batch of the uint8 images (a new
    random order every pass), mean subtraction + pad-crop-flip, forward, cross-entropy,
    backward, SGD step, MultiStepLR step; loss and error summed on the device every iteration
    and read every ``LOG_EVERY_N_STEPS`` iterations."""

    def __init__(
        self,
        net: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: torch.Tensor,
        batch_size: int,
    ) -> None:
        self.net = net.train()
        self.images, self.labels, self.mean, self.batch_size = images, labels, mean, batch_size
        self.optimizer = make_optimizer(self.net.parameters())
        self.scheduler = make_scheduler(self.optimizer)
        self.order = torch.randperm(len(labels))
        self.position, self.iteration = 0, 0
        self.sums = torch.zeros(3)  # loss * images, wrong images * 100, images
        self.logged: list[tuple[float, float]] = []

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.batch_size > len(self.order):
            self.order, self.position = torch.randperm(len(self.labels)), 0
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.images[index], self.labels[index]

    def step(self) -> None:
        images, labels = self.next_batch()
        images = subtract_mean_crop_flip(images, self.mean)
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
        if self.iteration % LOG_EVERY_N_STEPS == 0:
            loss_mean, error = (self.sums[:2] / self.sums[2]).tolist()
            self.logged.append((loss_mean, error))
            self.sums.zero_()

    def run(self, iterations: int) -> float:
        """Seconds for ``iterations`` iterations."""
        start = time.perf_counter()
        for _ in range(iterations):
            self.step()
        return time.perf_counter() - start


def make_data(batch_size: int, image_size: int, channels: int) -> SyntheticDataModule:
    """The synthetic DataModule, set up: ``NUM_TRAIN`` training images, no validation."""
    torch.manual_seed(0)
    datamodule = SyntheticDataModule(
        num_train=NUM_TRAIN, num_test=batch_size, image_size=image_size, channels=channels,
        classes=NUM_CLASSES, batch_size=batch_size, val_size=0,
    )  # fmt: skip
    datamodule.setup("fit")
    return datamodule


def hand_loop(name: str, datamodule: SyntheticDataModule) -> HandLoop:
    """A hand loop of a fresh ``name`` on ``datamodule``'s training images and mean."""
    splits = datamodule.splits
    assert splits is not None and datamodule.mean is not None
    net = make_net(name, datamodule.in_channels)
    return HandLoop(
        net, splits.train_images, splits.train_labels, datamodule.mean, datamodule.batch_size
    )


# --- part 1: in one process -----------------------------------------------------------------
class Interleave(L.Callback):
    """Times reslab's rounds of ``iterations`` iterations between training-batch ends (the
    global step counts iterations, ``fused_iterations`` of them per call) and runs a round of
    the hand loop after each; the first ``warmup`` iterations of each path are not timed."""

    def __init__(self, warmup: int, iterations: int, rounds: int, hand: HandLoop) -> None:
        self.warmup, self.iterations, self.rounds, self.hand = warmup, iterations, rounds, hand
        self.reslab: list[float] = []  # seconds per iteration, each round
        self.hand_times: list[float] = []
        self.start: tuple[float, int] | None = None  # (time, global step) of the round's start

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        now, step = time.perf_counter(), trainer.global_step
        if step < self.warmup:
            return
        if self.start is None:  # the end of reslab's warm-up
            self.hand.run(self.warmup)  # the hand loop's, not timed
        elif step - self.start[1] >= self.iterations:
            done = step - self.start[1]
            self.reslab.append((now - self.start[0]) / done)
            self.hand_times.append(self.hand.run(done) / done)
        else:
            return
        self.start = (time.perf_counter(), step)


class ProfileReslab(L.Callback):
    """cProfile of reslab's path from the end of the warm-up to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.profile = cProfile.Profile()
        self.from_step: int | None = None
        self.to_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.from_step is None and trainer.global_step >= self.warmup:
            self.from_step = trainer.global_step
            self.profile.enable()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.profile.disable()
        self.to_step = trainer.global_step


def reslab_fit(
    name: str,
    datamodule: SyntheticDataModule,
    fused: int,
    max_steps: int,
    callback: L.Callback,
    log_dir: str,
) -> None:
    """Trains ``name`` through reslab's path for ``max_steps`` iterations, with ``callback``."""
    torch.manual_seed(0)
    net = make_net(name, datamodule.in_channels)
    module = FusedClassifier(
        net, optimizer=make_optimizer, scheduler=make_scheduler, fused_iterations=fused
    )
    # conf/trainer/_base.yaml + cpu.yaml; reslab's CSV logger, divergence guard and signal stop
    built = trainer(
        fused_iterations=fused,
        accelerator="cpu",
        devices=1,
        default_root_dir=log_dir,
        max_steps=max_steps,
        max_epochs=-1,
        check_val_every_n_epoch=None,
        val_check_interval=VAL_CHECK_INTERVAL,
        log_every_n_steps=LOG_EVERY_N_STEPS,
        num_sanity_val_steps=0,
        precision="32-true",
        benchmark=None,
        deterministic=False,
        plugins=[AtomicCheckpointIO()],
        logger=AppendingCSVLogger(log_dir),
        callbacks=[callback, DivergenceGuard(), StopOnSignal()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    built.fit(module, datamodule=datamodule)


def round_iterations(hand: HandLoop, args: argparse.Namespace) -> int:
    """Iterations per round: about ``--round-seconds`` of the hand loop (a multiple of every
    fused setting), after its warm-up; ``--iterations`` when given."""
    multiple = math.lcm(*FUSED)
    if args.iterations is not None:
        return multiple * math.ceil(args.iterations / multiple)
    hand.run(args.warmup)
    seconds = hand.run(multiple) / multiple
    return multiple * max(1, math.ceil(args.round_seconds / seconds / multiple))


def measure_in_process(
    args: argparse.Namespace, console: Console, log_dir: str
) -> list[tuple[str, int, int, int, float, float]]:
    """(net, batch, fused, iterations timed, reslab s/it, hand s/it) of every setting."""
    rows = []
    for batch in args.batch_sizes:
        for name in args.nets:
            datamodule = make_data(batch, args.image_size, args.channels)
            iterations = round_iterations(hand_loop(name, datamodule), args)
            for fused in FUSED:
                hand = hand_loop(name, datamodule)
                interleave = Interleave(args.warmup, iterations, args.rounds, hand)
                max_steps = args.warmup + args.rounds * iterations
                reslab_fit(name, datamodule, fused, max_steps, interleave, log_dir)
                assert len(interleave.reslab) == args.rounds, interleave.reslab
                rows.append((
                    name, batch, fused, args.rounds * iterations,
                    statistics.median(interleave.reslab), statistics.median(interleave.hand_times),
                ))  # fmt: skip
    return rows


def print_in_process(rows: list[tuple[str, int, int, int, float, float]], console: Console) -> None:
    """The table of part 1 and the issue's goals it can judge."""
    table = Table(title=TABLE_TITLE)
    for column in (
        "net", "batch", "fused iterations", "iterations", "reslab µs/it", "hand µs/it",
        "reslab − hand µs/it", "reslab/hand",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for name, batch, fused, iterations, reslab, hand in rows:
        table.add_row(
            net_label(name), str(batch), str(fused), str(iterations), f"{1e6 * reslab:.1f}",
            f"{1e6 * hand:.1f}", f"{1e6 * (reslab - hand):.1f}", f"{reslab / hand:.3f}",
        )  # fmt: skip
    console.print(table)
    ratios = {(name, batch, fused): reslab / hand for name, batch, fused, _, reslab, hand in rows}
    fused = max(FUSED)
    tiny = [(b, r) for (n, b, f), r in ratios.items() if n == "tiny" and f == fused]
    if tiny:
        worst = max(r for _, r in tiny)
        console.print(
            f"goal tiny net, fused_iterations={fused}: reslab/hand <= 1.10 at every batch: "
            f"{'met' if worst <= 1.10 else 'missed'} (highest {worst:.3f})"
        )
    today, fused_20 = ratios.get(("resnet-20", 128, 1)), ratios.get(("resnet-20", 128, fused))
    if today is not None and fused_20 is not None:
        # the ratio to the hand loop of the same round removes the machine's drift between fits
        verdict = "met" if fused_20 <= today + 0.02 else "missed"
        console.print(
            f"goal ResNet-20 batch 128 no slower with fused_iterations={fused}: reslab/hand "
            f"{fused_20:.3f} against {today:.3f} with 1 (within 0.02): {verdict}"
        )


# --- part 2: through reslab-train -----------------------------------------------------------
def reslab_train(fused: int, args: argparse.Namespace, folder: Path) -> tuple[float, int]:
    """Runs reslab-train once; (seconds per iteration, iterations timed)."""
    marks_file = folder / f"marks-{fused}.json"
    overrides = [
        *TRAIN_OVERRIDES,
        f"optim.max_steps={args.train_warmup + args.train_iterations}",
        "+callbacks.timer._target_=iteration_timer.IterationTimer",
        f"+callbacks.timer.path={marks_file}",
    ]
    if fused != 1:
        overrides.append(f"module.fused_iterations={fused}")
    env = {
        **os.environ,
        "RESLAB_LOG_DIR": str(folder),
        "OMP_NUM_THREADS": str(args.threads),  # the threads torch uses there
        **(KEEP_MEMORY_ENV if args.keep_memory else {}),
        # this benchmark's folder (the timer) and the reslab this process runs
        "PYTHONPATH": os.pathsep.join(
            [str(BENCHMARKS), str(Path(inspect.getfile(FusedClassifier)).parents[1])]
        ),
    }
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", *overrides],
        env=env, capture_output=True, text=True, cwd=folder,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"reslab-train failed:\n{result.stdout}\n{result.stderr}")
    return per_iteration(json.loads(marks_file.read_text()), args.train_warmup)


def measure_reslab_train(
    args: argparse.Namespace, console: Console
) -> list[tuple[int, int, float, float]]:
    """(fused, iterations timed, reslab-train s/it, hand s/it), each the median over runs; the
    runs of each setting alternate with rounds of the hand loop in this process."""
    datamodule = make_data(TRAIN_BATCH, TRAIN_IMAGE, TRAIN_CHANNELS)
    splits = datamodule.splits
    assert splits is not None and datamodule.mean is not None
    torch.manual_seed(0)
    net = make_net(f"resnet-{TRAIN_DEPTH}", TRAIN_CHANNELS, TRAIN_WIDTHS)
    hand = HandLoop(net, splits.train_images, splits.train_labels, datamodule.mean, TRAIN_BATCH)
    hand.run(args.train_warmup)
    times: dict[int, list[float]] = {f: [] for f in FUSED}
    hand_times: dict[int, list[float]] = {f: [] for f in FUSED}
    counts: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.train_rounds):
            for fused in FUSED:
                folder = Path(tmp) / f"{fused}-{run}"
                folder.mkdir()
                seconds, counts[fused] = reslab_train(fused, args, folder)
                times[fused].append(seconds)
                hand_times[fused].append(hand.run(counts[fused]) / counts[fused])
    return [
        (f, counts[f], statistics.median(times[f]), statistics.median(hand_times[f])) for f in FUSED
    ]


def print_reslab_train(rows: list[tuple[int, int, float, float]], console: Console) -> None:
    """The table of part 2 and the issue's goal for it."""
    table = Table(title=TRAIN_TITLE)
    for column in (
        "module.fused_iterations", "iterations", "reslab-train µs/it", "hand µs/it",
        "reslab − hand µs/it", "reslab/hand",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for fused, iterations, reslab, hand in rows:
        table.add_row(
            str(fused), str(iterations), f"{1e6 * reslab:.1f}", f"{1e6 * hand:.1f}",
            f"{1e6 * (reslab - hand):.1f}", f"{reslab / hand:.3f}",
        )  # fmt: skip
    console.print(table)
    fused = [(f, reslab / hand) for f, _, reslab, hand in rows if f == max(FUSED)]
    if fused:
        ratio = fused[0][1]
        console.print(
            f"goal reslab-train tiny ResNet-8, fused_iterations={fused[0][0]}: within 10% of "
            f"the hand loop: {'met' if ratio <= 1.10 else 'missed'} ({ratio:.3f})"
        )


# --- profile --------------------------------------------------------------------------------
Profile = dict[tuple[str, int, str], tuple[int, int, float, float, Any]]  # pstats' entries


def profile_reslab(args: argparse.Namespace, console: Console, log_dir: str) -> None:
    """cProfile of reslab's path (tiny net, the first batch size) for each fused setting and of
    the hand loop: own time per iteration by package, then reslab's top functions by cumulative
    time. cProfile slows Python code (not the C kernels) about twofold, so the figures are
    larger than unprofiled ones; compare them with each other."""
    batch = args.batch_sizes[0]
    datamodule = make_data(batch, args.image_size, args.channels)
    profiles: dict[str, tuple[Profile, int]] = {}
    for fused in FUSED:
        profiler = ProfileReslab(args.profile_warmup)
        reslab_fit("tiny", datamodule, fused, args.profile_warmup + args.profile_iterations,
                   profiler, log_dir)  # fmt: skip
        assert profiler.from_step is not None and profiler.to_step is not None
        stats = pstats.Stats(profiler.profile).stats  # type: ignore[attr-defined]
        profiles[f"reslab, fused {fused}"] = (stats, profiler.to_step - profiler.from_step)
    hand = hand_loop("tiny", datamodule)
    hand.run(args.profile_warmup)
    profile = cProfile.Profile()
    profile.runcall(hand.run, args.profile_iterations)
    profiles["hand"] = (pstats.Stats(profile).stats, args.profile_iterations)  # type: ignore[attr-defined]

    table = Table(title=f"cProfile own time by package, µs per iteration (tiny net, batch {batch})")
    table.add_column("package")
    for name in profiles:
        table.add_column(name, justify="right")
    by_package = {name: own_by_package(stats, n) for name, (stats, n) in profiles.items()}
    packages = sorted(
        {p for shares in by_package.values() for p in shares},
        key=lambda p: -max(shares.get(p, 0.0) for shares in by_package.values()),
    )
    for where in [*packages, "total"]:
        table.add_row(where, *(
            f"{shares.get(where, 0.0) if where != 'total' else sum(shares.values()):.1f}"
            for shares in by_package.values()
        ))  # fmt: skip
    console.print(table)
    for name, (stats, iterations) in profiles.items():
        if name == "hand":
            continue
        console.print(
            f"\n{name}: top {args.profile_top} by cumulative time, {iterations} iterations "
            f"({PROFILE_FIELDS})"
        )
        ranked = sorted(stats.items(), key=lambda item: -item[1][3])
        for (file, line, function), (_, calls, own, cumulative, _) in ranked[: args.profile_top]:
            where = f"{short_path(file)}:{line}({function})" if line else function
            console.print(
                f"{1e6 * cumulative / iterations:10.1f} {1e6 * own / iterations:9.1f} "
                f"{calls / iterations:7.2f}  {where}",
                highlight=False, soft_wrap=True,
            )  # fmt: skip


def package(file: str, function: str) -> str:
    """Where a profiled function lives: a package of site-packages, reslab, this benchmark, the
    Python library, or C (cProfile's ``~``: torch's operators and methods, or Python's)."""
    if file == "~":
        return "C: torch" if "torch" in function else "C: Python builtins"
    parts = Path(file).parts
    if "site-packages" in parts:
        name = parts[parts.index("site-packages") + 1]
        return name.removesuffix(".py")
    if "reslab" in parts:
        return "reslab"
    if Path(file).resolve().parent == BENCHMARKS:
        return "this benchmark (callbacks, hand loop)"
    return "python library"


def own_by_package(stats: Profile, iterations: int) -> dict[str, float]:
    """µs per iteration of own time (the function itself, not what it calls) by package."""
    shares: dict[str, float] = {}
    for (file, _, function), (_, _, own, _, _) in stats.items():
        key = package(file, function)
        shares[key] = shares.get(key, 0.0) + 1e6 * own / iterations
    return shares


def short_path(file: str) -> str:
    """A source file's path from its package (``lightning/pytorch/loops/...``)."""
    parts = Path(file).parts
    for anchor in ("site-packages", "src"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) :])
    return file


# --- the command line -----------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with --tiny's choices filled in and every number checked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a few seconds: tiny net and ResNet-8, batch 8, the in-process part",
    )
    parser.add_argument("--nets", nargs="+", help="tiny, resnet-8, resnet-20, ...")
    parser.add_argument("--batch-sizes", type=int, nargs="+")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    parser.add_argument(
        "--keep-memory",
        action="store_true",
        help="glibc malloc keeps freed memory (no page faults per iteration), both paths",
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed iterations per path (a multiple of 10; default 20)"
    )
    parser.add_argument("--rounds", type=int, help="timed rounds per path and setting")
    parser.add_argument(
        "--round-seconds",
        type=float,
        default=0.4,
        help="a round lasts about this long in the hand loop",
    )
    parser.add_argument("--iterations", type=int, help="iterations per round (instead)")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["in-process", "reslab-train", "profile"],
        help="default: in-process reslab-train",
    )
    parser.add_argument(
        "--train-iterations", type=int, default=1000, help="timed iterations per reslab-train run"
    )
    parser.add_argument(
        "--train-warmup",
        type=int,
        default=100,
        help="untimed iterations at the start of each reslab-train run",
    )
    parser.add_argument("--train-rounds", type=int, default=3, help="reslab-train runs per setting")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add a cProfile of reslab's path (the part 'profile')",
    )
    parser.add_argument("--profile-iterations", type=int, default=1000)
    parser.add_argument(
        "--profile-warmup",
        type=int,
        default=100,
        help="untimed iterations, past the first logging one (50)",
    )
    parser.add_argument("--profile-top", type=int, default=40)
    args = parser.parse_args(argv)
    defaults = {
        "nets": ["tiny", "resnet-8", "resnet-20"],
        "batch_sizes": [8, 128],
        "rounds": 5,
        "warmup": 20,
        "parts": ["in-process", "reslab-train"],
    }
    if args.tiny:
        defaults.update(
            nets=["tiny", "resnet-8"], batch_sizes=[8], rounds=2, iterations=10, warmup=10,
            parts=["in-process"],
        )  # fmt: skip
        args.profile_iterations = min(args.profile_iterations, 20)
        args.profile_warmup = min(args.profile_warmup, 10)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.profile and "profile" not in args.parts:
        args.parts.append("profile")
    for name in args.nets:
        if name != "tiny" and not (name.startswith("resnet-") and name[7:].isdigit()):
            parser.error(f"--nets: {name!r} is not tiny or resnet-<depth>")
    for key in ("threads", "rounds", "warmup", "image_size", "channels", "train_iterations",
                "train_rounds", "profile_iterations"):  # fmt: skip
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.iterations is not None and args.iterations < 1:
        parser.error(f"--iterations must be >= 1, got {args.iterations}")
    if not args.round_seconds > 0:
        parser.error(f"--round-seconds must be > 0, got {args.round_seconds}")
    multiple = math.lcm(*FUSED)
    for key in ("warmup", "train_warmup", "train_iterations", "profile_iterations",
                "profile_warmup"):  # fmt: skip
        if getattr(args, key) % multiple:
            parser.error(f"--{key.replace('_', '-')} must be a multiple of {multiple} (the "
                         f"largest fused_iterations), got {getattr(args, key)}")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the parts asked for and prints their tables; 0."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_memory:
        keep_memory()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*LeafSpec.*", ".*across ranks is zero.*",
                    ".*srun. command is available.*"):  # fmt: skip
        warnings.filterwarnings("ignore", message=message)
    console = Console(width=130)
    console.print(
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, lightning "
        f"{L.__version__}; warm-up {args.warmup} + {args.rounds} rounds per path and setting, "
        "median over rounds"
        + (f"; --keep-memory: glibc malloc {KEEP_MEMORY_ENV}" if args.keep_memory else "")
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as log_dir:
        if "in-process" in args.parts:
            console.print(
                f"in-process: synthetic {args.channels}x{args.image_size}x{args.image_size} "
                f"images, rounds of about {args.round_seconds} s of the hand loop"
                if args.iterations is None
                else f"in-process: synthetic {args.channels}x{args.image_size}x"
                f"{args.image_size} images, {args.iterations} iterations per round"
            )
            print_in_process(measure_in_process(args, console, log_dir), console)
        if "reslab-train" in args.parts:
            console.print(
                f"\nreslab-train {' '.join(TRAIN_OVERRIDES)}: {args.train_rounds} runs per "
                f"setting, {args.train_warmup} untimed + {args.train_iterations} timed "
                "iterations each, median over runs; the hand loop in this process between runs"
            )
            print_reslab_train(measure_reslab_train(args, console), console)
        if "profile" in args.parts:
            profile_reslab(args, console, log_dir)
    console.print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
