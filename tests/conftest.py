"""Shared fixtures: tiny datasets in the real file formats, and configs composed like Hydra does."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import lightning  # noqa: F401  (before any test captures stderr: its console handler binds to the real one)
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from reslab.config import CONFIG_DIR, register_resolvers

register_resolvers()  # as every entry point does

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

CIFAR_BATCH = 32  # images per tiny CIFAR batch file


def write_cifar_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    """A batch file as the CIFAR-10 python version has it: a pickled dict with bytes keys,
    ``data`` N×3072 uint8 (red, green, blue planes), ``labels``, ``batch_label``, ``filenames``."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": labels,
        b"data": images.reshape(len(images), -1),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def make_cifar10(root: Path, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with 5 training batches and a test batch of tiny size."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (CIFAR_BATCH, 3, 32, 32), dtype=np.uint8)
        write_cifar_batch(folder / name, images, rng.integers(0, 10, CIFAR_BATCH).tolist())
    return root


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An idx file: 0x0000, type code 0x08 (uint8), number of dimensions, big-endian sizes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_imagenet(root: Path, n_train: int = 12, n_val: int = 2, seed: int = 0) -> Path:
    """``root/{train,val}/<class>/*.JPEG`` for 3 classes, random colour images of mixed
    sizes and aspect ratios, as ILSVRC-2012 is laid out."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = ((80, 100), (96, 72), (72, 72))
    for split, n in (("train", n_train), ("val", n_val)):
        for c in ("n01440764", "n01443537", "n01484850"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{c}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagenet(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture
def hydra_cfg() -> Iterator:
    """``hydra_cfg(tmp_path, overrides)``: the real config, composed in-process like
    ``reslab-train`` composes it, with its output folder in ``tmp_path``."""

    def make(output_dir: Path, overrides: list[str]) -> DictConfig:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        output_dir.mkdir(parents=True, exist_ok=True)
        return cfg

    yield make
    GlobalHydra.instance().clear()


def _cluster(tmp_path_factory: pytest.TempPathFactory, nodes: int) -> Iterator:
    from slurm_cluster import Cluster, why_not

    reason = why_not()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but no SLURM cluster: {reason}", pytrace=False)
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp(f"slurm{nodes}"), nodes=nodes).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A private one-node SLURM cluster for the whole test run (tests/slurm_cluster.py),
    stopped at the end by the pids it started. Where it cannot start (not root, no packages)
    the tests that use it skip with the reason; in CI (CI=true) they fail instead."""
    yield from _cluster(tmp_path_factory, 1)


@pytest.fixture(scope="module")
def slurm_two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A private two-node SLURM cluster (two slurmd on this machine) for a test module, as
    :func:`slurm_cluster` starts and stops its one node."""
    yield from _cluster(tmp_path_factory, 2)
