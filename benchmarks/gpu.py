"""GPU speed of reslab's training path: ms/iteration of ResNet-20 and ResNet-110 along the plain
eager fp32 path (``speed=eager``), the fast path (``speed=fast``) and the fast path with fused
iterations, the projected time for the paper's 64k iterations, peak GPU memory, and
ResNet-1202's peak memory with and without activation checkpointing (plus the activations a
training forward keeps for the backward pass, counted exactly on PyTorch's meta device, which
needs no GPU: ``--memory-only`` on any machine).

``--check`` is the one-shot check of a GPU machine, under 5 minutes on one H200, in four parts:
1. correctness (benchmarks/gpu_check.py): CUDA graphs keep batch norm's running statistics,
   bf16 keeps batch norm in fp32, a compiled net evaluates as the eager one, fused iterations
   log what single iterations log; 2. the speed table; 3. the Fashion-MNIST demo's four nets
   through ``reslab-train`` (gpu_check.py; needs Hydra: ``benchmarks/gpu_carry.sh``);
   4. the memory table, if time is left. Each part's table is printed and written to
   ``--out`` (default ``$OUT``, else benchmarks/gpu-results/) as soon as each of its rows is
   measured; a row or part that raises says FAILED with the exception's last line (the
   traceback goes to failures.md there), the script goes on, and exits 1 at the end.

Each run is the real thing: ``reslab.module.Classifier`` in a ``lightning.Trainer`` with the
options of ``conf/speed/*.yaml``, on synthetic CIFAR-shaped uint8 images held on the device, with
the full augmentation, batch 128, SGD with the paper's settings. A callback times the iterations
after the warm-up (compilation and CUDA-graph capture included there, not in the figure),
synchronising the device only at the start and the end of the timed window.

    bash benchmarks/gpu.sh                    # on a GPU machine: speed and memory tables
    bash benchmarks/gpu.sh --check            # on a GPU machine: the one-shot check, < 5 min
    bash benchmarks/gpu.sh --check --dry-run  # anywhere: the same code, tiny nets on the CPU
    bash benchmarks/gpu.sh --dry-run          # anywhere: speed and memory, tiny, no targets
    bash benchmarks/gpu.sh --memory-only      # anywhere: activations kept, with and without
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from reslab.data.synthetic import SyntheticDataModule
from reslab.fused import FusedClassifier, trainer
from reslab.networks import build_network

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "gpu-results"
PAPER_ITERATIONS = 64_000
# issue 14, for 64k iterations on one H200: (target, stretch target) in seconds
TARGET_SECONDS = {20: (60.0, 30.0), 110: (300.0, None)}
FAST_MODULE = {"channels_last": True, "compile": True, "cuda_graphs": True, "batchnorm_fp32": True}
FAST_TRAINER = {"precision": "bf16-mixed", "benchmark": True}
PATHS = {
    # name: (Classifier options, Trainer options), as conf/speed/{eager,fast}.yaml set them:
    # "fast + fused" is speed=fast (fused_iterations: --fused, 10 as there), "fast" the same
    # one iteration per Lightning step
    "eager fp32": (
        {"channels_last": False, "compile": False, "cuda_graphs": False, "fused_iterations": 1},
        {"precision": "32-true", "benchmark": None},
    ),
    "fast": ({**FAST_MODULE, "fused_iterations": 1}, FAST_TRAINER),
    "fast + fused": (FAST_MODULE, FAST_TRAINER),
    # not compiled: module.cuda_graphs then captures the whole fused step in one CUDA graph
    "fast + fused, step graph": ({**FAST_MODULE, "compile": False}, FAST_TRAINER),
}
PART_FILES = ("1-correctness.md", "2-speed.md", "3-demo.md", "4-memory.md")
FAILURES_FILE = "failures.md"
RESERVE_AFTER_SPEED = 100.0  # seconds the speed part leaves to the demo and memory parts
MEMORY_PART_SECONDS = 20.0  # the memory part trains only with this much time left


class Skipped(Exception):
    """A row that cannot be measured here, with the reason (not a failure)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer(L.Callback):
    """Seconds from the end of the step at which the trainer's iteration count first reaches
    ``warmup`` to the end of the last iteration, and the warm-up's own seconds (from the start
    of training: compilation and graph capture happen there). The device is synchronised only at
    those three points. With ``in_run_folder`` it writes ``timing.json`` into the trainer's
    ``default_root_dir`` (the run folder of ``reslab-train``: gpu.sh --check adds it there as
    ``+callbacks.timer._target_=gpu.Timer``)."""

    def __init__(self, warmup: int, in_run_folder: bool = False) -> None:
        self.warmup, self.in_run_folder = warmup, in_run_folder
        self.started = self.start = None
        self.start_step = 0
        self.warmup_seconds = self.seconds = float("nan")
        self.iterations = 0

    def on_train_start(self, trainer: L.Trainer, *args: object) -> None:
        device = trainer.strategy.root_device
        sync(device)
        if device.type == "cuda":  # this run's peak (a sweep runs several in one process)
            torch.cuda.reset_peak_memory_stats(device)
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        step = trainer.global_step
        if self.start is None and step >= self.warmup and step < trainer.max_steps:
            sync(trainer.strategy.root_device)
            self.start, self.start_step = time.perf_counter(), step
            self.warmup_seconds = self.start - self.started
        elif self.start is not None and step >= trainer.max_steps and not self.iterations:
            sync(trainer.strategy.root_device)
            self.seconds = time.perf_counter() - self.start
            self.iterations = step - self.start_step

    @property
    def ms_per_iteration(self) -> float:
        return 1000 * self.seconds / self.iterations if self.iterations else float("nan")

    def on_train_end(self, trainer: L.Trainer, *args: object) -> None:
        if not self.in_run_folder:
            return
        device = trainer.strategy.root_device
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        record = {
            "ms_per_iteration": self.ms_per_iteration if self.iterations else None,
            "timed_iterations": self.iterations,
            "warmup_iterations": self.start_step,
            "warmup_seconds": self.warmup_seconds if self.iterations else None,
            "peak_mib": peak,
        }
        Path(trainer.default_root_dir, "timing.json").write_text(json.dumps(record))


# --- the report: tables printed and written as they fill ------------------------------------
def last_line(err: BaseException) -> str:
    """The last line of the exception's traceback, as Python prints it."""
    lines = "".join(traceback.format_exception(err)).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


def short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Report:
    """Where the tables go: the console, and one markdown file per part in ``out``, rewritten
    after every row (a run cut short keeps what it measured); failures appended to
    failures.md with their tracebacks."""

    out: Path
    console: Console
    header: str
    failures: int = 0

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in (*PART_FILES, FAILURES_FILE):
            (self.out / name).unlink(missing_ok=True)  # nothing stale from an earlier run

    def failure(self, where: str, message: str, details: str = "") -> None:
        self.failures += 1
        self.console.print(f"  FAILED {where}: {message}", markup=False, highlight=False)
        with open(self.out / FAILURES_FILE, "a") as f:
            f.write(f"## {where}\n\n{message}\n")
            if details:
                f.write(f"\n```\n{details.rstrip()}\n```\n")
            f.write("\n")

    def exception(self, where: str, err: BaseException) -> str:
        message = last_line(err)
        self.failure(where, message, "".join(traceback.format_exception(err)))
        return message


@dataclass
class Part:
    report: Report
    file: str
    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    done: bool = False

    def __post_init__(self) -> None:
        self.report.console.print(f"\n{self.title} …", markup=False, highlight=False)
        self.write()

    def add(self, *cells: object) -> None:
        row = [str(c) for c in cells]
        self.rows.append(row)
        self.report.console.print("  " + " · ".join(c for c in row if c), markup=False,
                                  highlight=False)  # fmt: skip
        self.write()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.report.console.print(f"  {text}", markup=False, highlight=False)
        self.write()

    def markdown(self) -> str:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        lines = [self.report.header, "", f"### {self.title}", "", line(self.columns)]
        lines += [line(["---"] * len(self.columns)), *map(line, self.rows)]
        lines += ["", *self.notes] if self.notes else []
        if not self.done:
            lines += ["", "(in progress, or cut short here)"]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        (self.report.out / self.file).write_text(self.markdown())

    def finish(self) -> None:
        self.done = True
        self.write()
        table = Table(title=self.title)
        for column in self.columns:
            table.add_column(column, justify="right")
        for row in self.rows:
            table.add_row(*row)
        self.report.console.print(table)
        for text in self.notes:
            self.report.console.print(text, markup=False, highlight=False)


# --- training runs ------------------------------------------------------------------------
@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    log_dir: str
    report: Report
    started: float = field(default_factory=time.monotonic)

    def seconds_left(self) -> float:
        if not self.args.budget:
            return float("inf")
        return self.args.budget - (time.monotonic() - self.started)


def reset_torch_state(device: torch.device) -> None:
    """Every run starts from PyTorch's defaults: a run's cudnn.benchmark (set by Lightning's
    Trainer) and compiled graphs do not leak into the next."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = False
    torch.compiler.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bytes_kept_for_backward(net: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the tensors a training forward of ``net`` on ``images`` keeps for its backward
    pass (every tensor autograd saves, counted as it is saved): the activation memory that
    activation checkpointing trims. On the meta device it costs no memory and needs no GPU."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(images)
    return total


def classifier(
    net: nn.Module, milestones: Sequence[int] = (32_000, 48_000), **options: Any
) -> FusedClassifier:
    """The Classifier with the paper's SGD and schedule (lr / 10 at each of ``milestones``);
    ``options`` are its speed options."""
    return FusedClassifier(
        net,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
        scheduler=lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), 0.1),
        **options,
    )


def synthetic_data(batch_size: int) -> SyntheticDataModule:
    return SyntheticDataModule(
        num_train=batch_size * 8, num_test=batch_size, batch_size=batch_size, val_size=0
    )


def fit(
    ctx: Context,
    module: FusedClassifier,
    max_steps: int,
    *,
    batch_size: int | None = None,
    log_every: int = 50,
    logger: Any = False,
    callbacks: Sequence[L.Callback] = (),
    **trainer_options: Any,
) -> L.Trainer:
    """``max_steps`` iterations of ``module`` on synthetic CIFAR-shaped data, with the Trainer
    settings of conf/trainer (no validation, no checkpoints, nothing printed)."""
    datamodule = synthetic_data(batch_size or ctx.args.batch_size)
    built = trainer(  # its intervals in iterations, as conf/trainer's
        fused_iterations=module.fused_iterations,
        accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
        devices=1,
        default_root_dir=ctx.log_dir,
        max_steps=max_steps,
        max_epochs=-1,
        check_val_every_n_epoch=None,
        val_check_interval=module.fused_iterations * 10**8,  # (no validation)
        limit_val_batches=0,
        log_every_n_steps=log_every,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_options,
    )
    built.fit(module, datamodule=datamodule)
    return built


@dataclass
class Result:
    ms_per_iteration: float
    warmup_seconds: float
    peak_mib: float | None  # peak GPU memory allocated; None on a CPU


def run(depth: int, path: str, ctx: Context, activation_checkpointing: bool = False) -> Result:
    """Trains ResNet-``depth`` for warm-up + timed iterations along ``path``."""
    args, device = ctx.args, ctx.device
    module_options, trainer_options = PATHS[path]
    if path.startswith("fast + fused"):
        module_options = {**module_options, "fused_iterations": args.fused}
    if device.type != "cuda":
        trainer_options = {**trainer_options, "precision": "32-true"}  # bf16 conv is slow on CPU
    if args.dry_run:  # compiling takes most of a minute on 2 cores; check (c) compiles
        module_options = {**module_options, "compile": False}
    reset_torch_state(device)
    torch.manual_seed(0)
    net = build_network("cifar", depth, "A", activation_checkpointing=activation_checkpointing)
    module = classifier(net, **module_options)
    timer = Timer(args.warmup)
    k = module_options.get("fused_iterations", 1)  # intervals: multiples of it
    fit(ctx, module, args.warmup + args.steps, log_every=k * max(1, 50 // k), callbacks=[timer],
        **trainer_options)  # fmt: skip
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Result(timer.ms_per_iteration, timer.warmup_seconds, peak)


def activations_kept_mib(depth: int, batch_size: int, activation_checkpointing: bool) -> float:
    """MiB a training forward of ResNet-``depth`` keeps for its backward pass, counted on the
    meta device (shapes, no memory)."""
    with torch.device("meta"):
        net = build_network("cifar", depth, "A", activation_checkpointing=activation_checkpointing)
    return bytes_kept_for_backward(net, torch.empty(batch_size, 3, 32, 32, device="meta")) / 2**20


# --- the parts ----------------------------------------------------------------------------
def verdict(depth: int, projected: float) -> str:
    target, stretch = TARGET_SECONDS.get(depth, (None, None))
    if target is None:
        return ""
    said = f"≤ {target:.0f} s: {'met' if projected <= target else 'missed'}"
    if stretch is not None:
        said += f" (stretch ≤ {stretch:.0f} s: {'met' if projected <= stretch else 'missed'})"
    return said


def speed_part(ctx: Context, part: Part) -> None:
    args = ctx.args
    for depth in args.depths:
        for path in PATHS:
            label = (f"ResNet-{depth}", path)
            left = ctx.seconds_left()
            if left < RESERVE_AFTER_SPEED:
                part.add(*label, "-", "-", "-", "-", f"skipped: out of time ({left:.0f} s left)")
                continue
            try:
                result = run(depth, path, ctx)
            except Skipped as why:
                part.add(*label, "-", "-", "-", "-", f"skipped: {why}")
                continue
            except Exception as err:
                message = ctx.report.exception(f"speed, ResNet-{depth} {path}", err)
                part.add(*label, "FAILED", "-", "-", "-", short(message))
                continue
            projected = result.ms_per_iteration * PAPER_ITERATIONS / 1000
            judged = path != "eager fp32" and not args.dry_run
            part.add(
                *label, f"{result.ms_per_iteration:.2f}", f"{projected:.0f} s",
                f"{result.warmup_seconds:.1f}", mib(result.peak_mib),
                verdict(depth, projected) if judged else "",
            )  # fmt: skip
    part.note(
        f"{args.warmup} warm-up + {args.steps} timed iterations per run, batch "
        f"{args.batch_size}; warm-up s: compilation and graph capture included; fast: "
        f"speed=fast with fused_iterations=1; fast + fused: fused_iterations={args.fused}; "
        "step graph: not compiled, each fused step one CUDA graph"
    )
    if args.dry_run:
        part.note("dry run: fp32 and no compiling on the CPU")


def memory_part(ctx: Context, part: Part) -> None:
    """ResNet-``memory_depth`` with and without activation checkpointing: activations kept for
    the backward pass, and (when training here) ms/iteration and peak memory of eager fp32."""
    args = ctx.args
    train = torch.cuda.is_available() or args.dry_run  # --memory-only on a CPU: no training
    timing = argparse.Namespace(**{**vars(args), "steps": args.memory_steps, "warmup": 1})
    timed = Context(timing, ctx.device, ctx.log_dir, ctx.report, ctx.started)
    for checkpointing in (False, True):
        label = "on" if checkpointing else "off"
        try:
            kept = activations_kept_mib(args.memory_depth, args.batch_size, checkpointing)
        except Exception as err:
            message = ctx.report.exception(f"memory, checkpointing {label}", err)
            part.add(label, "FAILED", "-", short(message, 50))
            continue
        row = ["-", "-"]
        left = ctx.seconds_left()
        if train and left < MEMORY_PART_SECONDS:
            row = ["-", f"skipped: out of time ({left:.0f} s left)"]
        elif train:
            try:
                result = run(args.memory_depth, "eager fp32", timed, checkpointing)
                row = [f"{result.ms_per_iteration:.1f}", mib(result.peak_mib)]
            except torch.cuda.OutOfMemoryError:
                row = ["out of memory", "-"]
            except Exception as err:
                message = ctx.report.exception(f"memory, checkpointing {label}", err)
                row = ["FAILED", short(message, 50)]
        part.add(label, mib(kept), *row)


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


# --- the command line ---------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Parts of --check: 1 correctness, 2 speed, 3 demo, 4 memory.",
    )
    parser.add_argument("--check", action="store_true", help="the one-shot check, 4 parts")
    parser.add_argument("--dry-run", action="store_true", help="a few CPU iterations, tiny nets")
    parser.add_argument(
        "--memory-only", action="store_true", help="only the memory table (no GPU needed)"
    )
    parser.add_argument("--parts", type=int, nargs="+", choices=[1, 2, 3, 4],
                        help="with --check: only these parts (default all)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="folder of the tables (default $OUT, else "
                        "benchmarks/gpu-results)")  # fmt: skip
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds for all parts: later rows are "
        "skipped when it runs out (default 270 with --check on a GPU; 0: none)",
    )
    parser.add_argument("--depths", type=int, nargs="+")
    parser.add_argument("--memory-depth", type=int)
    parser.add_argument("--steps", type=int, help="timed iterations per run")
    parser.add_argument("--warmup", type=int, help="untimed iterations per run")
    parser.add_argument("--fused", type=int, help="fused_iterations of 'fast + fused'")
    parser.add_argument("--memory-steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--demo-steps", type=int, help="iterations of each demo net (part 3)")
    args = parser.parse_args(argv)
    defaults = {  # (on a GPU, --dry-run)
        "depths": ([20, 110], [8]), "memory_depth": (1202, 14), "steps": (200, 2),
        "warmup": (30, 2), "fused": (10, 2), "memory_steps": (3, 1), "batch_size": (128, 16),
        "demo_steps": (300, 20),
        "budget": (270.0 if args.check else 0.0, 0.0),
    }  # fmt: skip
    for key, (gpu, dry) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, dry if args.dry_run else gpu)
    for key in ("steps", "warmup", "fused", "memory_steps", "batch_size", "demo_steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if (args.warmup + args.steps) % args.fused:
        parser.error(f"--warmup + --steps must be a multiple of --fused ({args.fused})")
    if args.demo_steps % 10 or args.demo_steps < 20:  # speed=fast: fused_iterations 10
        parser.error(f"--demo-steps must be a multiple of 10 from 20 on, got {args.demo_steps}")
    if args.parts and not args.check:
        parser.error("--parts goes with --check")
    if args.check and args.memory_only:
        parser.error("--check and --memory-only: choose one")
    if not (args.dry_run or args.memory_only) and not torch.cuda.is_available():
        parser.error("no CUDA device is available; run with --dry-run to try it on the CPU")
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else DEFAULT_OUT
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if args.dry_run:  # its timings mean nothing; one thread stays quick on a busy machine
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # and in the demo's reslab-train
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*LeafSpec.*", ".*cuda_graphs needs.*",
                    ".*srun.*"):  # fmt: skip
        warnings.filterwarnings("ignore", message=message)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    console = Console(width=160)
    runs = "" if args.memory_only else f" · {args.warmup} warm-up + {args.steps} timed iterations"
    header = (
        f"{datetime.date.today()} · {name or 'cpu'} · torch {torch.__version__} · lightning "
        f"{L.__version__} · python {platform.python_version()} · batch {args.batch_size}{runs}"
        + (" · DRY RUN (CPU, tiny, no targets)" if args.dry_run else "")
    )
    console.print(header, markup=False, highlight=False)
    report = Report(args.out, console, header)
    with tempfile.TemporaryDirectory() as log_dir:
        ctx = Context(args, device, log_dir, report)
        for number, part_file, title, columns, body in parts(args):
            if args.check and args.parts and number not in args.parts:
                continue
            part = Part(report, part_file, title, columns)
            try:
                body(ctx, part)
            except Exception as err:
                part.note(f"part {number} FAILED: {report.exception(f'part {number}', err)}")
            part.finish()
    total = time.monotonic() - ctx.started
    console.print(f"\n{total:.0f} s in all; tables in {args.out}", markup=False, highlight=False)
    if report.failures:
        console.print(f"{report.failures} failure(s): {args.out / FAILURES_FILE}",
                      markup=False, highlight=False)  # fmt: skip
        return 1
    return 0


def parts(args: argparse.Namespace) -> list[tuple[int, str, str, list[str], Callable]]:
    """The parts this invocation runs: (number, file, title, columns, body)."""
    speed = (2, PART_FILES[1], "ms per iteration and the paper's 64k iterations",
             ["net", "path", "ms/it", "64k iterations", "warm-up s", "peak MiB", "target"],
             speed_part)  # fmt: skip
    memory = (4, PART_FILES[3], f"ResNet-{args.memory_depth}, batch {args.batch_size}: memory",
              ["activation checkpointing", "activations kept MiB", "ms/it", "peak MiB"],
              memory_part)  # fmt: skip
    if args.memory_only:
        return [memory]
    if not args.check:
        return [speed, memory]
    import gpu_check  # the correctness and demo parts

    correctness = (1, PART_FILES[0], "correctness", ["check", "result", "detail"],
                   gpu_check.correctness_part)  # fmt: skip
    demo = (3, PART_FILES[2], "Fashion-MNIST demo through reslab-train",
            ["net", "speed", "ms/it", "warm-up s", "train error %", "iterations", "peak MiB"],
            gpu_check.demo_part)  # fmt: skip
    return [correctness, speed, demo, memory]


if __name__ == "__main__":
    import gpu  # one copy of this module: gpu_check imports it by that name

    sys.exit(gpu.main())
