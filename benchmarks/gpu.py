"""GPU speed of reslab's training path: ms/iteration of ResNet-20 and ResNet-110 along the plain
eager fp32 path (``speed=eager``) and the fast path (``speed=fast``), the projected time for the
paper's 64k iterations, peak GPU memory, and ResNet-1202's peak memory with and without
activation checkpointing (plus the activations a training forward keeps for the backward pass,
counted exactly on PyTorch's meta device, which needs no GPU: ``--memory-only`` on any machine).

Each run is the real thing: ``reslab.module.Classifier`` in a ``lightning.Trainer`` with the
options of ``conf/speed/*.yaml``, on synthetic CIFAR-shaped uint8 images held on the device, with
the full augmentation, batch 128, SGD with the paper's settings. A callback times the iterations
after the warm-up (compilation and CUDA-graph capture included there, not in the figure),
synchronising the device only at the start and the end of the timed window.

    bash benchmarks/gpu.sh            # on a GPU machine, under 5 minutes
    bash benchmarks/gpu.sh --dry-run  # anywhere: a few iterations on the CPU, no targets
    bash benchmarks/gpu.sh --memory-only  # anywhere: activations kept, with and without
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from reslab.data.synthetic import SyntheticDataModule
from reslab.fast import bytes_kept_for_backward
from reslab.module import Classifier
from reslab.networks import build_network

PAPER_ITERATIONS = 64_000
TARGET_SECONDS = {20: 60.0, 110: 300.0}  # issue 5, for 64k iterations on one H100
PATHS = {
    # name: (Classifier options, Trainer options), as conf/speed/{eager,fast}.yaml set them
    "eager fp32": (
        {"channels_last": False, "compile": False, "cuda_graphs": False},
        {"precision": "32-true", "benchmark": None},
    ),
    "fast": (
        {"channels_last": True, "compile": True, "cuda_graphs": True},
        {"precision": "bf16-mixed", "benchmark": True},
    ),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer(L.Callback):
    """Seconds from the end of iteration ``warmup`` to the end of the last iteration."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start: float | None = None
        self.seconds = float("nan")

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()
        elif trainer.global_step == trainer.max_steps and self.start is not None:
            sync(self.device)
            self.seconds = time.perf_counter() - self.start


@dataclass
class Result:
    ms_per_iteration: float
    peak_mib: float | None  # peak GPU memory allocated; None on a CPU


def run(
    depth: int,
    path: str,
    args: argparse.Namespace,
    device: torch.device,
    log_dir: str,
    activation_checkpointing: bool = False,
) -> Result:
    """Trains ResNet-``depth`` for warm-up + timed iterations along ``path``."""
    module_options, trainer_options = PATHS[path]
    if device.type != "cuda":
        trainer_options = {**trainer_options, "precision": "32-true"}  # bf16 conv is slow on CPU
    torch.manual_seed(0)
    datamodule = SyntheticDataModule(
        num_train=args.batch_size * 8, num_test=args.batch_size, batch_size=args.batch_size,
        val_size=0,
    )  # fmt: skip
    net = build_network("cifar", depth, "A", activation_checkpointing=activation_checkpointing)
    module = Classifier(
        net,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
        scheduler=lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [32_000, 48_000], 0.1),
        **module_options,
    )
    timer = Timer(args.warmup, device)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        default_root_dir=log_dir,
        max_steps=args.warmup + args.steps,
        max_epochs=-1,
        check_val_every_n_epoch=None,
        val_check_interval=10**9,
        limit_val_batches=0,
        log_every_n_steps=50,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_options,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(module, datamodule=datamodule)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Result(1000 * timer.seconds / args.steps, peak)


def activations_kept_mib(depth: int, batch_size: int, activation_checkpointing: bool) -> float:
    """MiB a training forward of ResNet-``depth`` keeps for its backward pass, counted on the
    meta device (shapes, no memory)."""
    with torch.device("meta"):
        net = build_network("cifar", depth, "A", activation_checkpointing=activation_checkpointing)
    return bytes_kept_for_backward(net, torch.empty(batch_size, 3, 32, 32, device="meta")) / 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="a few CPU iterations, tiny nets")
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 110])
    parser.add_argument("--memory-depth", type=int, default=1202)
    parser.add_argument("--steps", type=int, default=200, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, default=30, help="untimed iterations per run")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--memory-only", action="store_true", help="only the memory table (no GPU needed)"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        args.depths, args.memory_depth = [8], 14
        args.steps, args.warmup, args.memory_steps, args.batch_size = 2, 1, 1, 16
    for key in ("steps", "warmup", "memory_steps", "batch_size"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not (args.dry_run or args.memory_only) and not torch.cuda.is_available():
        parser.error("no CUDA device is available; run with --dry-run to try it on the CPU")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train = torch.cuda.is_available() or args.dry_run  # --memory-only on a CPU: no training
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*LeafSpec.*", ".*cuda_graphs needs.*"):
        warnings.filterwarnings("ignore", message=message)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    console = Console(width=120)
    runs = f" · {args.warmup} warm-up + {args.steps} timed iterations per run"
    console.print(
        f"{datetime.date.today()} · {name or 'cpu'} · torch {torch.__version__} · batch "
        f"{args.batch_size}{'' if args.memory_only else runs}"
        + (" · DRY RUN (CPU, tiny, no targets)" if args.dry_run else "")
    )
    with tempfile.TemporaryDirectory() as log_dir:
        if not args.memory_only:
            console.print(speed_table(args, device, log_dir))
        console.print(memory_table(args, device, log_dir, train))
    return 0


def speed_table(args: argparse.Namespace, device: torch.device, log_dir: str) -> Table:
    table = Table(title="ms per iteration and the paper's 64k iterations")
    for column in ("net", "path", "ms/it", "64k iterations", "peak MiB", "target"):
        table.add_column(column, justify="right")
    for depth in args.depths:
        for path in PATHS:
            result = run(depth, path, args, device, log_dir)
            projected = result.ms_per_iteration * PAPER_ITERATIONS / 1000
            target = TARGET_SECONDS.get(depth)
            verdict = ""
            if path == "fast" and target is not None and not args.dry_run:
                verdict = f"≤ {target:.0f} s: {'met' if projected <= target else 'missed'}"
            table.add_row(
                f"ResNet-{depth}", path, f"{result.ms_per_iteration:.2f}",
                f"{projected:.0f} s", _mib(result.peak_mib), verdict,
            )  # fmt: skip
    return table


def memory_table(
    args: argparse.Namespace, device: torch.device, log_dir: str, train: bool
) -> Table:
    """ResNet-``memory_depth`` with and without activation checkpointing: activations kept for
    the backward pass, and (when training here) ms/iteration and peak memory of eager fp32."""
    table = Table(title=f"ResNet-{args.memory_depth}, batch {args.batch_size}: memory")
    for column in ("activation checkpointing", "activations kept MiB", "ms/it", "peak MiB"):
        table.add_column(column, justify="right")
    args.steps, args.warmup = args.memory_steps, 1
    for checkpointing in (False, True):
        kept = activations_kept_mib(args.memory_depth, args.batch_size, checkpointing)
        row = ["-", "-"]
        if train:
            try:
                result = run(args.memory_depth, "eager fp32", args, device, log_dir, checkpointing)
                row = [f"{result.ms_per_iteration:.1f}", _mib(result.peak_mib)]
            except torch.cuda.OutOfMemoryError:
                row = ["out of memory", "-"]
        table.add_row("on" if checkpointing else "off", _mib(kept), *row)
    return table


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


if __name__ == "__main__":
    sys.exit(main())
