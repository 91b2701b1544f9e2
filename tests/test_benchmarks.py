"""The benchmark scripts run end to end in a tiny mode and print their tables; no timing targets,
but every number is there, positive, and agrees with the others (img/s × ms per iteration =
images per iteration, a ratio = one column over the other), within the rounding printed."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def table_rows(out: str, title: str) -> dict[str, list[str]]:
    """The body rows of the rich table titled ``title``: first cell → the other cells."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            return rows
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    raise AssertionError(f"table {title!r} has no end in:\n{out}")


def number(cell: str) -> float:
    """A printed number: ``1048 s``, ``12.9x``, ``1,024`` → float."""
    match = re.fullmatch(r"([0-9][0-9,]*(?:\.[0-9]+)?)\s*(?:s|x)?", cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group(1).replace(",", ""))


def signed(cell: str) -> float:
    """A printed number that may be negative: ``-12.5`` → -12.5."""
    return -number(cell[1:]) if cell.startswith("-") else number(cell)


def rounding(cell: str) -> float:
    """The relative rounding error of a printed number: half a unit of its last digit over it
    (``41`` img/s may be 41.49: 1.2%)."""
    digits = cell.split(".")[1] if "." in cell else ""
    decimals = len(re.match(r"[0-9]*", digits).group())
    return 0.5 * 10**-decimals / abs(signed(cell))


def shown(cell: str, exact: float, rel: float = 0.01) -> bool:
    """``cell`` is ``exact`` as printed: within half a unit of its last digit, plus ``rel`` for
    the rounding of the printed numbers ``exact`` was computed from."""
    digits = cell.split(".")[1] if "." in cell else ""
    decimals = len(re.match(r"[0-9]*", digits).group())
    return abs(signed(cell) - exact) <= 0.5 * 10**-decimals + rel * abs(exact)


def test_throughput_tiny() -> None:
    out = run_script(
        "throughput.py", "--depths", "8", "--steps", "2", "--rounds", "1", "--warmup", "1"
    )
    rows = table_rows(out, "Training throughput: reslab Trainer vs plain PyTorch loop")
    assert list(rows) == ["ResNet-8"]
    cells = rows["ResNet-8"]
    assert len(cells) == 7 and all(number(c) > 0 for c in cells)
    reslab_img_s, plain_img_s, ratio, reslab_ms, plain_ms, reslab_layer, plain_layer = cells
    # reslab/plain is the ratio of the throughputs (of the median seconds per round)
    assert shown(ratio, number(reslab_img_s) / number(plain_img_s))
    # img/s × ms/it = images per iteration × 1000 (batch 128); ms/it/layer = ms/it / 8 layers
    for img_s, ms, layer in ((reslab_img_s, reslab_ms, reslab_layer),
                             (plain_img_s, plain_ms, plain_layer)):  # fmt: skip
        assert shown(img_s, 128 * 1000 / number(ms))
        assert shown(layer, number(ms) / 8)
    verdict = re.search(r"target reslab/plain >= 0\.95 at every depth: (met|missed) "
                        r"\(lowest ([0-9.]+)\)", out)  # fmt: skip
    assert verdict and verdict.group(2) == ratio
    assert verdict.group(1) == ("met" if number(ratio) >= 0.95 else "missed")


def check_overhead_row(reslab_us: str, hand_us: str, difference: str, ratio: str) -> None:
    """Times and ratio positive; difference = reslab − hand and ratio = reslab / hand as
    printed. The difference may be negative where compute dominates (noise)."""
    assert number(reslab_us) > 0 and number(hand_us) > 0 and number(ratio) > 0
    exact = number(reslab_us) - number(hand_us)  # both to 0.1 µs: the difference to 0.1 too
    assert abs(signed(difference) - exact) <= 0.15, (difference, exact)
    assert shown(ratio, number(reslab_us) / number(hand_us))


def test_overhead_tiny() -> None:
    out = run_script("overhead.py", "--tiny")
    rows = table_body(out, "Host time per iteration: reslab against a hand-written loop")
    # tiny net and ResNet-8 at batch 8, each with fused_iterations 1 and 10; 2 rounds x 10
    assert [row[:4] for row in rows] == [
        [net, "8", fused, "20"] for net in ("tiny", "ResNet-8") for fused in ("1", "10")
    ]
    for row in rows:
        check_overhead_row(*row[4:])
    ratios = {(row[0], row[2]): row[7] for row in rows}
    goal = re.search(r"goal tiny net, fused_iterations=10: reslab/hand <= 1\.10 at every "
                     r"batch: (met|missed) \(highest ([0-9.]+)\)", out)  # fmt: skip
    assert goal and goal.group(2) == ratios["tiny", "10"]
    assert goal.group(1) == ("met" if number(ratios["tiny", "10"]) <= 1.10 else "missed")
    assert "reslab-train" not in out  # --tiny: the in-process part only


def test_overhead_through_reslab_train() -> None:
    # the timing callback in real reslab-train runs (4 of them, a few seconds each)
    out = run_script(
        "overhead.py", "--parts", "reslab-train", "--train-iterations", "20",
        "--train-warmup", "10", "--train-rounds", "1",
    )  # fmt: skip
    rows = table_body(out, "Time per iteration through reslab-train (tiny ResNet-8)")
    assert [row[:2] for row in rows] == [["1", "20"], ["10", "20"]]
    for row in rows:
        check_overhead_row(*row[2:])
    goal = re.search(r"goal reslab-train tiny ResNet-8, fused_iterations=10: within 10% of "
                     r"the hand loop: (met|missed) \(([0-9.]+)\)", out)  # fmt: skip
    assert goal and goal.group(2) == rows[1][5]


@pytest.mark.parametrize(
    ("args", "training"),
    [(("--batches", "3", "--rounds", "1", "--train-steps", "1"), "measured"),
     (("--batches", "2", "--rounds", "1", "--workers", "0", "--train-img-s", "500"), "given")],
)  # fmt: skip
def test_data_tiny(args: tuple[str, ...], training: str) -> None:
    out = run_script("data.py", *args)
    workers = "0" if "--workers" in args else "2"
    rows = table_rows(out, "Augmented images per second")
    reslab, torchvision, train = (
        "reslab (uint8 tensor, batched ops)",
        f"torchvision (PIL, DataLoader, {workers} workers)",
        f"ResNet-20 training ({training}, plain loop)",
    )
    assert list(rows) == [reslab, torchvision, train]
    assert all(number(c) > 0 for cells in rows.values() for c in cells)
    reslab_rate = number(rows[reslab][0])
    for img_s, ms_per_batch, vs_reslab in rows.values():
        # batch 128; the printed img/s is rounded (a slow machine prints few digits)
        assert shown(ms_per_batch, 128 * 1000 / number(img_s), 0.01 + rounding(img_s))
        assert shown(vs_reslab, reslab_rate / number(img_s), 0.01 + rounding(img_s))
    assert rows[reslab][2] == "1.0x"
    if training == "given":
        assert rows[train][0] == "500"
    summary = re.search(r"reslab/torchvision ([0-9.]+x) .*reslab/ResNet-20 training ([0-9.]+x)",
                        out)  # fmt: skip
    assert summary and summary.groups() == (rows[torchvision][2], rows[train][2])


def table_body(out: str, title: str) -> list[list[str]]:
    """Every body row of the rich table titled ``title``, in order (first cells may repeat)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == title)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("└"):
            return rows
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    raise AssertionError(f"table {title!r} has no end in:\n{out}")


def run_gpu_sh(*args: str) -> subprocess.CompletedProcess:
    # gpu.sh runs .venv/bin/python, else python3, else python: here this test's interpreter
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": path},
    )  # fmt: skip


def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    result = run_gpu_sh("--check", "--dry-run", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "DRY RUN" in out
    # 1: every correctness check passes
    checks = table_rows(out, "correctness")
    assert list(checks) == ["(a) cuda_graphs BN stats", "(a) step graph BN stats",
                            "(b) bf16 BN in fp32", "(c) compile eval outputs",
                            "(d) fused_iterations"]  # fmt: skip
    for name, (verdict, detail) in checks.items():
        assert verdict == "PASS", f"{name}: {verdict} {detail}"
    assert "num_batches_tracked 20" in checks["(a) cuda_graphs BN stats"][1]
    assert "num_batches_tracked 20" in checks["(a) step graph BN stats"][1]
    assert "batch_norm input float32" in checks["(b) bf16 BN in fp32"][1]

    # 2: ms/iteration of every path, the 64k projection, no targets on the CPU
    speed = table_body(out, "ms per iteration and the paper's 64k iterations")
    assert [row[:2] for row in speed] == [
        ["ResNet-8", "eager fp32"], ["ResNet-8", "fast"], ["ResNet-8", "fast + fused"],
        ["ResNet-8", "fast + fused, step graph"],
    ]  # fmt: skip
    for _, _, ms, projected, warmup, peak, target in speed:
        assert number(ms) > 0 and number(warmup) >= 0
        assert shown(projected, number(ms) * 64_000 / 1000)  # the paper's 64k iterations
        assert (peak, target) == ("-", "")  # no CUDA memory on the CPU; no target

    # 3: the demo's smallest net through reslab-train, both speeds
    demo = table_body(out, "Fashion-MNIST demo through reslab-train")
    assert [row[:2] for row in demo] == [["plain-8", "eager"], ["plain-8", "fast"]]
    for _, _, ms, warmup, error, iterations, peak in demo:
        assert number(ms) > 0 and number(warmup) >= 0 and 0 <= number(error) <= 100
        assert (iterations, peak) == ("20", "-")

    # 4: activations kept, with and without checkpointing
    memory = table_rows(out, "ResNet-14, batch 16: memory")
    assert list(memory) == ["off", "on"]
    assert all(number(c) > 0 for cells in memory.values() for c in cells[:2])
    assert memory["off"][2] == memory["on"][2] == "-"  # peak MiB: no CUDA memory on the CPU
    # activation checkpointing keeps fewer activations for the backward pass
    assert number(memory["on"][0]) < number(memory["off"][0])

    # each part's table is in its own markdown file; nothing failed
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "1-correctness.md", "2-speed.md", "3-demo.md", "4-memory.md"
    ]  # fmt: skip
    for name in ("1-correctness.md", "2-speed.md", "3-demo.md", "4-memory.md"):
        text = (tmp_path / name).read_text()
        assert "DRY RUN" in text and "| --- |" in text and "in progress" not in text
    assert "| (a) cuda_graphs BN stats | PASS |" in (tmp_path / "1-correctness.md").read_text()
    assert "| plain-8 | eager | " in (tmp_path / "3-demo.md").read_text()


def test_gpu_check_says_failed_and_goes_on(tmp_path: Path) -> None:
    # ResNet-7 does not exist: every row of part 2 raises (the network is built first); part 4
    # runs all the same
    result = run_gpu_sh(
        "--check", "--dry-run", "--parts", "2", "4", "--depths", "7", "--out", str(tmp_path)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    speed = table_body(result.stdout, "ms per iteration and the paper's 64k iterations")
    failed = [row for row in speed if row[2] == "FAILED"]
    assert [row[1] for row in failed] == [
        "eager fp32", "fast", "fast + fused", "fast + fused, step graph"
    ]  # fmt: skip
    assert all(row[-1].startswith("ValueError: ") for row in failed)
    memory = table_rows(result.stdout, "ResNet-14, batch 16: memory")
    assert list(memory) == ["off", "on"] and number(memory["on"][0]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "2-speed.md", "4-memory.md", "failures.md"
    ]  # fmt: skip
    failures = (tmp_path / "failures.md").read_text()
    assert failures.count("## speed, ResNet-7") == len(failed)
    assert "Traceback" in failures and "ValueError: " in failures


@pytest.mark.parametrize("args", [(), ("--check",)])
def test_gpu_script_refuses_to_time_without_a_gpu(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), *args],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # no GPU, even on a machine with one
    )  # fmt: skip
    assert result.returncode == 2
    assert "no CUDA device is available; run with --dry-run" in result.stderr
