"""Parts 1 and 3 of ``bash benchmarks/gpu.sh --check`` (gpu.py runs them; see its docstring).

Part 1, correctness, each check on a small CIFAR ResNet (ResNet-20 on a GPU, ResNet-8 in a dry
run) trained through the real Classifier and Trainer on synthetic data:
(a) ``cuda_graphs=True`` leaves every batch norm's running statistics where an eager run of the
    same seed leaves them after 20 iterations;
(b) under ``bf16-mixed`` with ``batchnorm_fp32=True`` every batch norm computes on fp32 input
    and keeps fp32 running statistics;
(c) a compiled ResNet-8 (``compile=True``) evaluates as the eager one (fp32, TF32 off);
(d) ``fused_iterations=1`` and ``=50`` log the same train/loss, train/error and lr (100
    iterations, as reslab refuses a max_steps that K does not divide; the lr falls tenfold
    after iteration 51, inside a fused step).

Part 3 trains the Fashion-MNIST demo's nets (conf/experiment/demo.yaml) through
``reslab-train`` with ``speed=eager`` and ``speed=fast``: one sweep process each, a few hundred
iterations, no evaluation. ``gpu.Timer`` (added to the run's callbacks) writes each run's
ms/iteration into its run folder. A machine without Hydra gets it from the wheels that
``benchmarks/gpu_carry.sh`` puts in ``.gpu-carry/wheels``, installed into ``.gpu-carry/site``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from gpu import ROOT, Context, Part, Skipped, classifier, fit, mib, reset_torch_state, short
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

from reslab.data.fashion_mnist import DEBIAN_DIR, FILES
from reslab.networks import build_network

CARRY = ROOT / ".gpu-carry"
# What reslab.cli imports that a GPU machine with PyTorch and Lightning may lack.
CLI_MODULES = ("hydra", "omegaconf", "antlr4", "submitit")
DEMO_NETS = ("plain-8", "resnet-8A", "plain-32", "resnet-32A")  # the sweep's order
GRAPH_ITERATIONS = 20  # check (a)
COMPILE_DEPTH = 8  # check (c)
FUSED = {"gpu": (50, 100, 50), "dry": (2, 4, 2)}  # check (d): K, iterations, log interval


# --- part 1: correctness ------------------------------------------------------------------
def correctness_part(ctx: Context, part: Part) -> None:
    depth = 8 if ctx.args.dry_run else 20
    checks: list[tuple[str, Callable[[Context, int], tuple[bool, str]]]] = [
        ("(a) cuda_graphs BN stats", check_cuda_graphs),
        ("(a) step graph BN stats", check_step_graph),
        ("(b) bf16 BN in fp32", check_bf16_batchnorm),
        ("(c) compile eval outputs", check_compile),
        ("(d) fused_iterations", check_fused),
    ]
    for label, check in checks:
        started = time.monotonic()
        try:
            ok, detail = check(ctx, depth)
        except Skipped as why:
            part.add(label, "skipped", short(str(why), 90))
            continue
        except Exception as err:
            part.add(label, "FAILED", short(ctx.report.exception(f"correctness {label}", err), 90))
            continue
        if not ok:
            ctx.report.failure(f"correctness {label}", detail)
        seconds = time.monotonic() - started
        part.add(label, "PASS" if ok else "FAIL", short(f"{detail} ({seconds:.0f} s)", 90))
    part.note(
        f"ResNet-{depth}, batch {ctx.args.batch_size}, fp32 unless said; (a) and (d) with "
        "cudnn.deterministic"
    )


def batch_norms(net: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {name: m for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}


def check_step_graph(ctx: Context, depth: int) -> tuple[bool, str]:
    """(a): the same with fused_iterations=5, where cuda_graphs=True captures each whole fused
    step in one CUDA graph (the first step eager, then three replays)."""
    return check_cuda_graphs(ctx, depth, fused=5)


def check_cuda_graphs(ctx: Context, depth: int, fused: int = 1) -> tuple[bool, str]:
    """(a): 20 iterations with cuda_graphs=True against 20 eager ones from the same seed."""
    states = []
    for graphs in (False, True):
        reset_torch_state(ctx.device)
        torch.backends.cudnn.deterministic = True
        L.seed_everything(0, verbose=False)
        options = {"cuda_graphs": True, "fused_iterations": fused} if graphs else {}
        module = classifier(build_network("cifar", depth, "A"), **options)
        fit(ctx, module, GRAPH_ITERATIONS, log_every=fused)
        states.append({
            name: [t.detach().cpu().clone() for t in
                   (bn.running_mean, bn.running_var, bn.num_batches_tracked)]
            for name, bn in batch_norms(module.net).items()
        })  # fmt: skip
    eager, graphed = states
    torch.backends.cudnn.deterministic = False
    if list(eager) != list(graphed):
        return False, f"different batch norms: {len(eager)} eager, {len(graphed)} graphed"
    worst, differ = 0.0, []
    counts = {int(s[2]) for s in (*eager.values(), *graphed.values())}
    for name, (mean, var, count) in eager.items():
        g_mean, g_var, g_count = graphed[name]
        for kind, a, b in (("running_mean", mean, g_mean), ("running_var", var, g_var)):
            worst = max(worst, float((a - b).abs().max()))
            if not torch.allclose(b, a, rtol=1e-5, atol=1e-6):
                differ.append(f"{name}.{kind}")
        if int(count) != int(g_count):
            differ.append(f"{name}.num_batches_tracked")
    ok = not differ and counts == {GRAPH_ITERATIONS}
    detail = (f"{len(eager)} BNs: max |diff| {worst:.1e} (rtol 1e-5), num_batches_tracked "
              f"{'/'.join(map(str, sorted(counts)))}")  # fmt: skip
    if differ:
        detail += f"; differ: {', '.join(differ[:3])}" + (" …" if len(differ) > 3 else "")
    return ok, detail


BATCH_NORM_FUNCTIONS = {"batch_norm", "native_batch_norm", "_native_batch_norm_legit",
                        "cudnn_batch_norm"}  # fmt: skip


class BatchNormInputs(TorchFunctionMode):
    """Records the dtype of the input of every batch-norm function called while a batch norm
    module's forward runs (``current[0]`` is its name, set by a pre-hook)."""

    def __init__(self, current: list[str | None], seen: dict[str, set[torch.dtype]]) -> None:
        super().__init__()
        self.current, self.seen = current, seen

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        name = self.current[0]
        if name is not None and getattr(func, "__name__", "") in BATCH_NORM_FUNCTIONS:
            tensor = args[0] if args else kwargs.get("input")
            self.seen[name].add(tensor.dtype)
        return func(*args, **kwargs)


def check_bf16_batchnorm(ctx: Context, depth: int) -> tuple[bool, str]:
    """(b): 3 iterations under bf16-mixed with batchnorm_fp32=True, watched by hooks."""
    reset_torch_state(ctx.device)
    L.seed_everything(0, verbose=False)
    module = classifier(build_network("cifar", depth, "A"), batchnorm_fp32=True)
    bns = batch_norms(module.net)
    received: dict[str, set[torch.dtype]] = {name: set() for name in bns}
    computed: dict[str, set[torch.dtype]] = {name: set() for name in bns}
    conv_out: set[torch.dtype] = set()
    current: list[str | None] = [None]

    def before(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            received[name].add(args[0].dtype)
            current[0] = name

        return hook

    def after(*_: object) -> None:
        current[0] = None

    hooks = [
        h
        for name, bn in bns.items()
        for h in (bn.register_forward_pre_hook(before(name)), bn.register_forward_hook(after))
    ]
    hooks += [m.register_forward_hook(lambda m, a, out: conv_out.add(out.dtype))
              for m in module.net.modules() if isinstance(m, nn.Conv2d)]  # fmt: skip
    try:
        with BatchNormInputs(current, computed):
            fit(ctx, module, 3, precision="bf16-mixed")
    finally:
        for hook in hooks:
            hook.remove()
    names = lambda dtypes: "/".join(sorted(str(d).removeprefix("torch.") for d in dtypes))  # noqa: E731
    stats = {t.dtype for bn in bns.values()
             for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)}  # fmt: skip
    every_in = set().union(*received.values())
    every_computed = set().union(*computed.values())
    problems = []
    if torch.bfloat16 not in conv_out:
        problems.append(f"autocast inactive (conv outputs {names(conv_out)})")
    if not all(received.values()) or not all(computed.values()):
        problems.append("some BN not run or computed out of sight")
    if every_computed != {torch.float32}:
        problems.append("BN computed on non-fp32 input")
    if stats != {torch.float32}:
        problems.append(f"stats/affine {names(stats)}")
    detail = (f"{len(bns)} BNs: module input {names(every_in)}, batch_norm input "
              f"{names(every_computed)}, stats {names(stats)}")  # fmt: skip
    if problems:
        detail += "; " + "; ".join(problems)
    return not problems, detail


def check_compile(ctx: Context, depth: int) -> tuple[bool, str]:
    """(c): eval outputs of compile=True against the same net uncompiled, fp32, TF32 off (the
    compiler may pick other convolution kernels, and TF32's rounding would hide the rest).
    ResNet-8 whatever ``depth``: it has every kind of layer, and compiles fastest."""
    depth = COMPILE_DEPTH
    L.seed_everything(0, verbose=False)
    net = build_network("cifar", depth, "A")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # running statistics away from 0 and 1, so that they matter
        for bn in batch_norms(net).values():
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 1.5 + 0.5)
    images = torch.randn(3 * ctx.args.batch_size, 3, 32, 32, generator=g)
    traced: list[bool] = []
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    outputs = []
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        for compiled in (False, True):
            reset_torch_state(ctx.device)
            copied = copy.deepcopy(net)
            if compiled:  # the compiler traces this hook; eager runs leave it False
                copied.fc.register_forward_pre_hook(
                    lambda *_: traced.append(torch.compiler.is_compiling())
                )
            trainer = L.Trainer(
                accelerator="gpu" if ctx.device.type == "cuda" else "cpu", devices=1,
                precision="32-true", logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=ctx.log_dir,
            )  # fmt: skip
            batches = DataLoader(images, batch_size=ctx.args.batch_size)  # (B, 3, 32, 32) each
            predictions = trainer.predict(classifier(copied, compile=compiled), batches)
            outputs.append(torch.cat(predictions).float())
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    eager, compiled_out = outputs
    diff = float((compiled_out - eager).abs().max())
    ok = torch.allclose(compiled_out, eager, rtol=1e-4, atol=1e-5) and any(traced)
    detail = (f"ResNet-{depth}, {len(eager)} images: max |diff| {diff:.1e} (rtol 1e-4, atol "
              f"1e-5), logits up to {float(eager.abs().max()):.1f}")  # fmt: skip
    if not any(traced):
        detail += "; the compiler never traced the net"
    return ok, detail


class MemoryLogger(Logger):
    """What the Classifier logs, by step: {step: {name: value}}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.setdefault(step, {}).update({k: float(v) for k, v in metrics.items()})


def check_fused(ctx: Context, depth: int) -> tuple[bool, str]:
    """(d): the rows logged with fused_iterations=1 and =K."""
    k, iterations, log_every = FUSED["dry" if ctx.args.dry_run else "gpu"]
    logged = []
    for fused in (1, k):
        reset_torch_state(ctx.device)
        torch.backends.cudnn.deterministic = True
        L.seed_everything(0, verbose=False)
        net = build_network("cifar", depth, "A")  # lr / 10 inside the first fused step of K:
        module = classifier(net, milestones=[k + 1], fused_iterations=fused)  # per iteration
        logger = MemoryLogger()
        trainer = fit(ctx, module, iterations, log_every=log_every, logger=logger)
        if trainer.global_step != iterations:
            return False, f"fused_iterations={fused}: global_step {trainer.global_step}"
        logged.append({step: {name: value for name, value in row.items()
                              if name in ("train/loss", "train/error", "lr")}
                       for step, row in logger.rows.items()})  # fmt: skip
    torch.backends.cudnn.deterministic = False
    single, fused_rows = logged
    exact = ctx.device.type != "cuda"
    steps = sorted(s for s in single if s is not None)
    detail = f"1 vs {k}, {iterations} it, lr / 10 at {k + 1}, rows at {steps}"
    if single != fused_rows and (
        sorted(single) != sorted(fused_rows)
        or any(single[s].keys() != fused_rows[s].keys() for s in single)
    ):
        return False, f"{detail}; fused rows at {sorted(s for s in fused_rows if s is not None)}"
    worst = max((abs(a - fused_rows[s][n]) / max(abs(a), 1e-12)
                 for s in single for n, a in single[s].items()), default=0.0)  # fmt: skip
    has_loss = all("train/loss" in row for row in single.values()) and len(steps) >= 2
    ok = has_loss and (worst == 0.0 if exact else worst <= 1e-5)
    detail += f": max rel diff {worst:.1e} ({'exact on the CPU' if exact else 'rtol 1e-5'})"
    return ok, detail if has_loss else f"{detail}; train/loss not logged at every row"


# --- part 3: the demo through reslab-train ------------------------------------------------
def demo_part(ctx: Context, part: Part) -> None:
    args = ctx.args
    pythonpath, how = cli_pythonpath()
    if pythonpath is None:
        part.note(f"skipped: {how}")
        return
    if how:
        part.note(how)
    data_dir, said = fashion_mnist_dir(Path(ctx.log_dir))
    part.note(said)
    steps = args.demo_steps  # speed=fast fuses 10 iterations: multiples of 10
    warmup = log_every = max(steps // 3 // 10 * 10, 10) if steps >= 30 else 10
    nets = DEMO_NETS[:1] if args.dry_run else DEMO_NETS
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "src"), str(ROOT / "benchmarks"), *pythonpath,
             *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "HYDRA_FULL_ERROR": "1",
        "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    for speed in ("eager", "fast"):
        left = ctx.seconds_left()
        if left < 30:
            for net in nets:
                part.add(net, speed, "-", "-", "-", "-", f"skipped: out of time ({left:.0f} s)")
            continue
        sweep = Path(ctx.log_dir) / f"demo-{speed}"
        trainer = "gpu" if ctx.device.type == "cuda" else "cpu"
        overrides = [
            "experiment=demo", f"speed={speed}", f"trainer={trainer}", "logger=csv",
            f"optim.max_steps={steps}",
            f"optim.milestones=[{steps // 2},{3 * steps // 4}]",
            f"trainer.log_every_n_steps={log_every}", f"trainer.val_check_interval={steps}",
            "++trainer.limit_val_batches=0", "++trainer.limit_test_batches=0",
            f"callbacks.checkpoint.every_n_train_steps={steps}", f"data.data_dir={data_dir}",
            f"paths.log_dir={ctx.log_dir}", f"hydra.sweep.dir={sweep}",
            "+callbacks.timer._target_=gpu.Timer", f"+callbacks.timer.warmup={warmup}",
            "+callbacks.timer.in_run_folder=true",
        ]  # fmt: skip
        if args.dry_run:
            overrides += ["model.depth=8", "shortcut=none"]  # the smallest net alone
            if speed == "fast":
                overrides.append("module.compile=false")  # compiling on 2 cores takes minutes
        started = time.monotonic()
        log = Path(ctx.log_dir) / f"demo-{speed}.log"
        rc, timed_out = run_process(
            [sys.executable, "-m", "reslab.cli", *overrides], env, log,
            None if left == float("inf") else max(left - 5, 1),
        )  # fmt: skip
        seconds = time.monotonic() - started
        runs = read_sweep(sweep)
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
        reported = False
        for net in nets:
            status, timing = runs.get(net, ({}, {}))
            state = status.get("status")
            if state == "finished" and timing.get("ms_per_iteration") is not None:
                part.add(
                    net, speed, f"{timing['ms_per_iteration']:.2f}",
                    f"{timing['warmup_seconds']:.1f}", _percent(status.get("train/error")),
                    str(status.get("iterations")), mib(timing.get("peak_mib")),
                )  # fmt: skip
            elif timed_out and state in (None, "running"):
                part.add(net, speed, "-", "-", "-", "-", "cut: out of time")
            else:
                why = status.get("error") or (f"no timing.json (status {state})" if state else
                                               f"no run (exit {rc}): {_last(tail)}")  # fmt: skip
                ctx.report.failure(f"demo {net} speed={speed}", why, tail if not reported else "")
                reported = True
                part.add(net, speed, "FAILED", "-", "-", "-", short(why, 60))
        if rc not in (0, None) and not reported:
            ctx.report.failure(f"demo speed={speed}", f"reslab-train exited {rc}", tail)
        part.note(f"speed={speed}: one reslab-train sweep of {len(nets)} net(s), {steps} "
                  f"iterations each, timed after {warmup}: {seconds:.0f} s in all")  # fmt: skip
    if args.dry_run:
        part.note("dry run: speed=fast with module.compile=false (no compiling on the CPU)")


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _last(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def run_process(
    command: list[str], env: dict[str, str], log: Path, timeout: float | None
) -> tuple[int | None, bool]:
    """Runs ``command`` in its own process group with its output in ``log``; past ``timeout``
    seconds the group is killed: (exit status or None, timed out)."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            return process.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None, True


def read_sweep(sweep: Path) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The sweep's runs by network name: (status.json, timing.json) of each."""
    runs = {}
    for status_file in sorted(sweep.glob("*/status.json")):
        status = json.loads(status_file.read_text())
        timing_file = status_file.parent / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
        runs[status.get("name")] = (status, timing)
    return runs


def cli_pythonpath() -> tuple[list[str] | None, str]:
    """What ``reslab-train`` needs on PYTHONPATH beyond src/: nothing when Hydra and the rest of
    CLI_MODULES import here; else .gpu-carry/site, with the carried wheels installed there
    (pip without an index, else unzipped: they are pure Python). None and the reason when
    neither is possible."""
    missing = [name for name in CLI_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return [], ""
    wheels = sorted((CARRY / "wheels").glob("*.whl"))
    if not wheels:
        return None, (
            f"{', '.join(missing)} not importable and no wheels in .gpu-carry/wheels (make them "
            "with `bash benchmarks/gpu_carry.sh` where pip reaches PyPI, and carry .gpu-carry)"
        )
    site = CARRY / "site"
    shutil.rmtree(site, ignore_errors=True)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile",
         "--disable-pip-version-check", "-q", "--target", str(site), *map(str, wheels)],
        capture_output=True, text=True,
    )  # fmt: skip
    how = "pip"
    if pip.returncode != 0:
        how = f"unzipped (pip: {_last(pip.stderr + pip.stdout)})"
        shutil.rmtree(site, ignore_errors=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "src")])}
    check = subprocess.run([sys.executable, "-c", f"import {', '.join(CLI_MODULES)}"],
                           env=env, capture_output=True, text=True)  # fmt: skip
    if check.returncode != 0:
        raise RuntimeError(f"the carried wheels do not import: {_last(check.stderr)}")
    names = ", ".join(w.name.split("-")[0] for w in wheels)
    return [str(site)], f"{', '.join(missing)} from .gpu-carry/wheels ({names}; {how})"


def fashion_mnist_dir(scratch: Path) -> tuple[Path, str]:
    """A folder with Fashion-MNIST's four files: carried, the project's data folder, Debian's
    package; else random images written in their format into ``scratch``."""
    data = Path(os.environ.get("RESLAB_DATA_DIR", ROOT / "data")) / "fashion_mnist"
    candidates = [
        (CARRY / "fashion_mnist", "carried in .gpu-carry/fashion_mnist"),
        (data, "the project's data folder"),
        (data / "FashionMNIST" / "raw", "the project's data folder"),
        (DEBIAN_DIR, "Debian's dataset-fashion-mnist"),
    ]
    for folder, where in candidates:
        if all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in FILES.values()):
            return folder.resolve(), f"Fashion-MNIST: {where} ({folder})"
    folder = scratch / "fashion_mnist_random"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 11_400), ("test", 1_000)):  # the demo: 6,400 train + 5,000 val
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8).numpy()
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8).numpy()
        write_idx(folder / FILES[f"{split}_images"], images)
        write_idx(folder / FILES[f"{split}_labels"], labels)
    return folder, (
        "Fashion-MNIST not found (.gpu-carry/fashion_mnist, data/, Debian's package): random "
        "images in its format instead, so the train error means nothing"
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array as an idx file (the format of MNIST and Fashion-MNIST)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())
