"""Bad input through ``reslab-train``: a short message that names the bad value and the valid
choices, exit status 1, no traceback (unless HYDRA_FULL_ERROR=1), no run folder that looks
finished.

Every case runs in-process through the command's own entry point (``reslab.cli.train_main`` with
``sys.argv`` set: the same code path as the console script, without a ~6 s interpreter start);
the cases marked ``cli`` run again as real ``reslab-train`` processes.

A non-image file among ImageNet images: one without an image extension is skipped with a
warning naming it (tests/test_imagenet_data.py); one with an image extension that does not
decode is an error naming it (the case ``imagenet-undecodable-image`` below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cifar10, make_imagenet, write_idx

from reslab.cli import train_main as main

GPUS = torch.cuda.device_count()
IMAGENET_SMALL = (
    "model=imagenet", "model.depth=18", "data=imagenet", "data.crop_size=32",
    "data.scale=[36,40]", "data.eval_resize=36", "data.batch_size=4", "data.eval_batch_size=2",
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # overrides; {data} is the folder of broken datasets
    expect: tuple[str, ...]  # in the message: the bad value and the valid choices
    cli: bool = False  # also through a real reslab-train process


CASES = {
    "cifar-depth-21": Case(
        ("model.depth=21", "data=synthetic"),
        ("model.depth=21", "20, 32, 44, 56, 110, 1202"),
        cli=True,
    ),
    "cifar-depth-0": Case(("model.depth=0", "data=synthetic"), ("model.depth=0", "8, 14, 20, 26")),
    "cifar-depth-minus-8": Case(
        ("model.depth=-8", "data=synthetic"), ("model.depth=-8", "8, 14, 20, 26")
    ),
    "imagenet-depth-20": Case(
        ("model=imagenet", "model.depth=20", "data=synthetic"),
        ("model.depth=20", "18, 34, 50, 101, 152"),
    ),
    "shortcut-D": Case(("shortcut=D",), ("shortcut=D", "A, B, C, none"), cli=True),
    "unknown-dataset": Case(
        ("data=imagenet22k",),
        ("data=imagenet22k", "cifar10, cifar100, fashion_mnist, imagenet, synthetic"),
    ),
    "data-dir-missing": Case(
        ("data=cifar10", "data.data_dir={data}/nowhere", "data.download=false"),
        ("nowhere' does not exist", "or set data.data_dir"),
    ),
    "seed-negative": Case(("seed=-1", "data=synthetic"), ("seed=-1", "from 0 to 4294967295")),
    "trainer-setting-lightning-refuses": Case(  # not blamed on the devices
        ("trainer.limit_val_batches=1.5", "data=synthetic"),
        ("trainer.limit_val_batches=1.5 is not valid", "it has to be in [0.0, 1.0] or an int"),
    ),
    "trainer-setting-lightning-refuses-at-fit": Case(  # (seen only with the data)
        ("trainer.limit_val_batches=0.01", "data=synthetic"),
        ("trainer.limit_val_batches=0.01 is not valid", "Try at least `limit_val_batches=1.0`"),
    ),
    "fashion-mnist-data-dir-missing": Case(  # (Debian's copy is read only when none is given)
        ("data=fashion_mnist", "data.data_dir={data}/nowhere", "data.download=false"),
        ("nowhere' does not exist", "or set data.data_dir"),
    ),
    "fashion-mnist-data-dir-no-folder": Case(
        ("data=fashion_mnist", "data.data_dir=[]"), ("data.data_dir=[] is not valid", "folders")
    ),
    "fashion-mnist-data-dir-empty": Case(
        ("data=fashion_mnist", "data.data_dir={data}", "data.download=false"),
        ("Fashion-MNIST not found (the four idx files are missing)", "/FashionMNIST/raw'"),
    ),
    "cifar-truncated-batch": Case(
        ("data=cifar10", "data.data_dir={data}/cifar_truncated", "data.download=false"),
        ("data_batch_3' is truncated", "not a CIFAR pickle"),
        cli=True,
    ),
    "idx-wrong-magic": Case(
        ("data=fashion_mnist", "data.data_dir={data}/fashion_mnist_magic"),
        ("train-labels-idx1-ubyte' has magic number 00000a01", "expected 0000 then a type code"),
    ),
    "imagenet-class-without-images": Case(
        (*IMAGENET_SMALL, "data.data_dir={data}/imagenet_empty"),
        ("train/n01443537'", "needs at least one image (.jpg, .jpeg"),
    ),
    "imagenet-no-class-folders": Case(
        (*IMAGENET_SMALL, "data.data_dir={data}/imagenet_flat"),
        ("no class folders in", "/<class>/*.JPEG"),
    ),
    "imagenet-undecodable-image": Case(
        (*IMAGENET_SMALL, "data.data_dir={data}/imagenet_bad_file", "data.num_workers=1"),
        ("cannot decode image", "n01443537/notes.JPEG'"),
    ),
    "batch-size-0": Case(
        ("data.batch_size=0", "data=synthetic"), ("data.batch_size=0", "an integer >= 1")
    ),
    "fused-iterations-0": Case(
        ("module.fused_iterations=0", "data=synthetic"),
        ("module.fused_iterations=0", "an integer >= 1"),
    ),
    "warmup-min-depth-abc": Case(
        ("optim.warmup.min_depth=abc", "data=synthetic"),
        ("optim.warmup.min_depth='abc'", "an integer >= 1"),
    ),
    "negative-lr": Case(("optim.lr=-0.1", "data=synthetic"), ("optim.lr=-0.1", "a number >= 0")),
    "negative-lr-on-the-optimizer": Case(
        ("module.optimizer.lr=-0.1", "data=synthetic"), ("module.optimizer.lr=-0.1", ">= 0")
    ),
    "negative-momentum": Case(
        ("optim.momentum=-1", "data=synthetic"), ("optim.momentum=-1", "a number >= 0")
    ),
    "max-epochs-0": Case(  # it ended "finished" after 0 iterations, the untrained net's errors
        ("data=synthetic", "trainer.max_epochs=0"),
        ("trainer.max_epochs=0 is not valid", "trains by iterations (optim.max_steps)", "-1"),
    ),
    "max-epochs-2-with-fused-iterations": Case(
        ("data=synthetic", "trainer.max_epochs=2", "module.fused_iterations=2"),
        ("trainer.max_epochs=2 is not valid", "valid: -1 or null"),
    ),
    "check-val-every-0-epochs": Case(  # a ZeroDivisionError at fit
        ("data=synthetic", "trainer.check_val_every_n_epoch=0"),
        ("trainer.check_val_every_n_epoch=0 is not valid", "an integer >= 1 or null"),
    ),
    "metrics-outside-the-run-folder": Case(  # metrics.csv went to ./abc, the folder had none
        ("data=synthetic", "logger.csv.save_dir=abc"),
        (
            "logger.csv.save_dir='abc' is not valid: a run folder holds its own files",
            "valid: ${paths.output_dir}, the default",
        ),
    ),
    "checkpoints-outside-the-run-folder": Case(
        ("data=synthetic", "callbacks.checkpoint.dirpath=/tmp/elsewhere"),
        (
            "callbacks.checkpoint.dirpath='/tmp/elsewhere' is not valid",
            "valid: ${paths.output_dir}/checkpoints",
        ),
    ),
    "callback-entry-not-a-config": Case(  # (it was Hydra's "Cannot instantiate ... str")
        ("data=synthetic", "callbacks.progress=abc"),
        ("callbacks.progress='abc' is not valid", "a config with a _target_, or null"),
    ),
    "warmup-not-a-config": Case(  # callbacks.warmup is ${optim.warmup}: the key the user set
        ("data=synthetic", "optim.warmup=3"),
        ("optim.warmup=3 is not valid", "a config with a _target_, or null"),
    ),
    "accumulated-gradients": Case(  # each micro-batch of a step got the step's crops
        ("data=synthetic", "+trainer.accumulate_grad_batches=2"),
        ("trainer.accumulate_grad_batches=2 is not valid", "valid: 1"),
    ),
    "sync-batchnorm-on-one-cpu-rank": Case(  # DDP converts the layers for one rank too
        (
            "data=synthetic",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "trainer.sync_batchnorm=true",
        ),
        ("trainer.sync_batchnorm=true needs GPUs", "valid on CPUs: false"),
    ),
    "sync-batchnorm-on-cpus": Case(  # torch's SyncBatchNorm would fail at the first batch
        (
            "data=synthetic",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.sync_batchnorm=true",
        ),
        ("trainer.sync_batchnorm=true needs GPUs", "valid on CPUs: false"),
    ),
    "more-devices-than-exist": Case(
        ("trainer=gpu", f"trainer.devices={GPUS + 1}", "data=synthetic"),
        (f"trainer.devices={GPUS + 1}", "valid here: trainer=cpu" if GPUS == 0 else "from 1 to"),
    ),
    **{
        f"strategy-{name}": Case(
            ("data=synthetic", "trainer.devices=2", f"+trainer.strategy={name}"),
            (f"trainer.strategy={name} is not supported", "valid: auto, single_device, ddp,"),
            cli=name == "ddp_spawn",  # the command
        )
        for name in (
            "ddp_spawn",
            "ddp_fork",
            "ddp_notebook",
            "ddp_spawn_find_unused_parameters_true",
            "fsdp",
            "deepspeed",
        )
    },
    "strategy-object-that-spawns": Case(
        (
            "data=synthetic",
            "trainer.devices=2",
            "+trainer.strategy={{_target_:lightning.pytorch.strategies.DDPStrategy,"
            "start_method:spawn}}",
        ),
        ("trainer.strategy=DDPStrategy is not supported", "ddp_find_unused_parameters_true"),
    ),
    "imagenet-fewer-val-images-than-processes": Case(
        (
            *IMAGENET_SMALL,
            "data.data_dir={data}/nowhere",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "data.val_size=1",
        ),
        ("data.val_size=1", "valid: 0, null or an integer >= 2"),
    ),
    "ckpt-path-missing": Case(
        ("ckpt_path={data}/nope/last.ckpt", "data=synthetic"),
        ("nope/last.ckpt does not exist", "checkpoints/last.ckpt"),
        cli=True,
    ),
    # train() reads a checkpoint itself before the folder changes: a local file or nothing
    **{
        f"ckpt-path-{name}": Case(
            (f"ckpt_path={value}", "data=synthetic"),
            (f"ckpt_path={value} does not exist", "valid: a checkpoint file", *said),
            cli=name == "url",
        )
        for name, value, said in (
            ("best", "best", ()),
            ("hpc", "hpc", ()),
            ("registry", "registry", ()),
            ("url", "s3://bucket/run/last.ckpt", ("a URL: copy the checkpoint to a local file",)),
        )
    },
    "ckpt-path-is-a-folder": Case(
        ("ckpt_path={data}", "data=synthetic"), ("is a folder, not a checkpoint file", "valid:")
    ),
    "ckpt-path-not-a-checkpoint": Case(  # a torch file of tensors: Lightning's KeyError
        ("ckpt_path={data}/weights.pt", "data=synthetic"),
        ("weights.pt is not a checkpoint of a reslab run (it lacks 'state_dict'", "valid:"),
    ),
    "wandb-tag-too-long": Case(  # wandb's own check, before the data loads
        ("logger=wandb", f"tags=[{'t' * 65}]", "data=synthetic"),
        (f"tags=['{'t' * 65}'] is not valid", "Tags must be between 1 and 64 characters"),
    ),
    "misspelt-top-level-key": Case(
        ("modle.depth=20",), ("unknown config key 'modle'", "did you mean 'model'?"), cli=True
    ),
    "misspelt-nested-key": Case(
        ("model.dpeth=20",), ("'model.dpeth'", "did you mean 'model.depth'?")
    ),
    "misspelt-group": Case(("shortcutt=A",), ("'shortcutt'", "did you mean 'shortcut'?")),
    "misspelt-group-option": Case(
        ("data=cifar11",), ("data=cifar11", "did you mean data=cifar10 or data=cifar100?")
    ),
    # intervals count iterations (reslab.fused.trainer): named, not blamed on the devices
    "val-check-interval-1.0": Case(
        ("trainer.val_check_interval=1.0", "data=synthetic"),
        ("trainer.val_check_interval=1.0", "an integer >= 1 (iterations), or a time"),
    ),
    "val-check-interval-0": Case(
        ("trainer.val_check_interval=0", "data=synthetic"), ("trainer.val_check_interval=0",)
    ),
    "log-every-n-steps-minus-3": Case(
        ("trainer.log_every_n_steps=-3", "data=synthetic"),
        ("trainer.log_every_n_steps=-3", "an integer >= 1"),
    ),
    "log-every-n-steps-abc": Case(
        ("trainer.log_every_n_steps=abc", "data=synthetic"), ("trainer.log_every_n_steps='abc'",)
    ),
    "max-steps-abc": Case(
        ("optim.max_steps=abc", "data=synthetic"), ("optim.max_steps='abc'", "an integer >= 1")
    ),
    "max-steps-minus-1": Case(
        ("optim.max_steps=-1", "data=synthetic"), ("optim.max_steps=-1", "an integer >= 1")
    ),
    "checkpoint-interval-abc": Case(
        ("callbacks.checkpoint.every_n_train_steps=abc", "data=synthetic"),
        ("callbacks.checkpoint.every_n_train_steps='abc'", "an integer >= 0 or null"),
    ),
    # fewer training images than one batch: no iteration could train (it "finished" at 0)
    "train-subset-below-the-batch": Case(
        ("data.train_subset=8", "data=synthetic", "data.batch_size=16"),
        ("data.batch_size=16 is larger than the 8 training images", "at most 8"),
    ),
}


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of broken datasets, made once for the whole table."""
    root = tmp_path_factory.mktemp("bad_data")
    cifar = make_cifar10(root / "cifar_truncated") / "cifar-10-batches-py" / "data_batch_3"
    cifar.write_bytes(cifar.read_bytes()[:1000])

    fashion = root / "fashion_mnist_magic"
    fashion.mkdir()
    for name, n in (("train", 8), ("t10k", 4)):
        write_idx(fashion / f"{name}-images-idx3-ubyte", np.zeros((n, 28, 28)))
        write_idx(fashion / f"{name}-labels-idx1-ubyte", np.zeros(n))
    labels = fashion / "train-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x0a\x01" + labels.read_bytes()[4:])  # type code 0x0a: none

    for name in ("imagenet_empty", "imagenet_flat", "imagenet_bad_file"):
        make_imagenet(root / name, n_train=2, n_val=1)
    for image in (root / "imagenet_empty" / "train" / "n01443537").iterdir():
        image.unlink()
    for folder in (root / "imagenet_flat" / "train").iterdir():
        shutil.rmtree(folder)
    (root / "imagenet_bad_file" / "train" / "n01443537" / "notes.JPEG").write_text("not an image")
    torch.save({"weights": torch.zeros(2)}, root / "weights.pt")
    return root


def overrides(case: Case, data: Path, tmp_path: Path) -> list[str]:
    return [
        "logger=csv", *(a.format(data=data) for a in case.args),
        "debug=smoke", f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]  # fmt: skip


def check_output(output: str, case: Case, tmp_path: Path) -> None:
    tail = "\n".join(output.strip().splitlines()[-3:])
    assert "reslab-train: error: " in tail, output[-3000:]
    for text in case.expect:
        assert text in tail, f"{text!r} not in:\n{tail}"
    assert "Traceback" not in output, output[-3000:]
    for status in tmp_path.rglob("status.json"):
        assert json.loads(status.read_text())["status"] != "finished", status


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_says_what_and_what_is_valid(
    case: Case, bad_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(sys, "argv", ["reslab-train", *overrides(case, bad_data, tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    out, err = capfd.readouterr()
    check_output(out + err, case, tmp_path)


def cli_env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def reslab_train() -> list[str]:
    script = Path(sys.executable).with_name("reslab-train")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "reslab.cli"]


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.cli])
def test_bad_input_through_the_real_command(name: str, bad_data: Path, tmp_path: Path) -> None:
    case = CASES[name]
    result = subprocess.run(
        [*reslab_train(), *overrides(case, bad_data, tmp_path)],
        capture_output=True, text=True, env=cli_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    check_output(result.stdout + result.stderr, case, tmp_path)
    assert result.stderr.strip().splitlines()[-2].startswith("reslab-train: error: ")


def test_hydra_full_error_gives_the_traceback(bad_data: Path, tmp_path: Path) -> None:
    case = CASES["cifar-depth-21"]
    result = subprocess.run(
        [sys.executable, "-m", "reslab.cli", *overrides(case, bad_data, tmp_path)],
        capture_output=True, text=True, env={**cli_env(), "HYDRA_FULL_ERROR": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert (
        "ValueError: model.depth=21 is not valid; valid: an integer >= 8 of the form 6n+2"
        in result.stderr
    )
    assert "reslab-train: error:" not in result.stderr
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "model.depth=21" in status["error"]
