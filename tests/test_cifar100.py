"""CIFAR-100 from tiny files in the exact format of ``cifar-100-python``."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from reslab.data import CIFAR100DataModule
from reslab.data.cifar import load_pickle_batch

N_TRAIN, N_TEST = 300, 100


def write_cifar100_file(path: Path, images: np.ndarray, fine: list[int], coarse: list[int]) -> None:
    """A file as the CIFAR-100 python version has it: a pickled dict with bytes keys,
    ``filenames``, ``batch_label``, ``fine_labels``, ``coarse_labels`` and ``data`` N×3072 uint8
    (red, green, blue planes)."""
    batch = {
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
        b"batch_label": f"{path.name}ing batch 1 of 1".encode(),
        b"fine_labels": fine,
        b"coarse_labels": coarse,
        b"data": images.reshape(len(images), -1),
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def make_cifar100(root: Path, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train,test}``; fine labels cover all 100 classes."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = (np.arange(n) % 100).tolist()
        rng.shuffle(fine)
        write_cifar100_file(folder / name, images, fine, [f // 5 for f in fine])
    return root


@pytest.fixture(scope="module")
def tiny_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cifar100(tmp_path_factory.mktemp("cifar100"))


def test_file_round_trip_reads_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    write_cifar100_file(tmp_path / "train", images, [99, 42, 10, 0], [19, 8, 2, 0])
    got, labels = load_pickle_batch(tmp_path / "train")
    assert np.array_equal(got, images)
    assert labels.tolist() == [99, 42, 10, 0]  # the fine labels, not the coarse ones


def test_setup_splits_and_labels(tiny_cifar100: Path) -> None:
    dm = CIFAR100DataModule(tiny_cifar100, val_size=50, download=False)
    assert (dm.name, dm.num_classes, dm.in_channels, dm.image_size) == ("cifar100", 100, 3, 32)
    dm.setup()
    s = dm.splits
    assert s.train_images.shape == (N_TRAIN - 50, 3, 32, 32)
    assert s.train_images.dtype == torch.uint8 and s.train_labels.dtype == torch.int64
    assert s.val_images.shape[0] == 50 and s.test_images.shape[0] == N_TEST
    everything = torch.cat([s.train_labels, s.val_labels])
    assert torch.bincount(everything, minlength=100).tolist() == [3] * 100  # all 100 classes
    assert torch.bincount(s.test_labels, minlength=100).tolist() == [1] * 100
    assert int(everything.max()) == 99
    # the fine labels of the file, image by image
    raw = pickle.loads((tiny_cifar100 / "cifar-100-python" / "test").read_bytes())
    assert s.test_labels.tolist() == raw[b"fine_labels"]
    assert torch.equal(s.test_images.flatten(1), torch.from_numpy(raw[b"data"]))
    assert torch.allclose(dm.mean, s.train_images.float().mean(0))


def test_loaders(tiny_cifar100: Path) -> None:
    dm = CIFAR100DataModule(tiny_cifar100, val_size=50, batch_size=64, eval_batch_size=40)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == (N_TRAIN - 50) // 64
    images, labels = batches[0]
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.max() >= 10  # labels beyond CIFAR-10's come through
    assert [len(y) for _, y in dm.val_dataloader()] == [40, 10]
    assert [len(y) for _, y in dm.test_dataloader()] == [40, 40, 20]
    x, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and torch.allclose(x, (images.float() - dm.mean) / 255)


def test_all_50k_for_training(tiny_cifar100: Path) -> None:
    dm = CIFAR100DataModule(tiny_cifar100, val_size=0, train_subset=100)
    dm.setup()
    assert len(dm.splits.train_labels) == 100 and not dm.has_val
    assert dm.val_dataloader() == []


def test_missing_files_name_the_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python").mkdir()
    dm = CIFAR100DataModule(tmp_path, download=False)
    with pytest.raises(
        FileNotFoundError, match=r"missing train, test.*cifar-100-python\.tar\.gz.*cifar-100-python"
    ):
        dm.setup()


def test_labels_out_of_range(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    write_cifar100_file(folder / "train", images, [5, 100], [1, 20])
    write_cifar100_file(folder / "test", images, [5, 6], [1, 1])
    with pytest.raises(ValueError, match=r"cifar100 train labels run from 5 to 100; valid: 0 to"):
        CIFAR100DataModule(tmp_path, val_size=0, download=False).setup()


def test_file_without_labels(tmp_path: Path) -> None:
    (tmp_path / "train").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(ValueError, match=r"expected 'data' and 'labels' .*'fine_labels'"):
        load_pickle_batch(tmp_path / "train")


def test_config(tmp_path: Path, hydra_cfg, tiny_cifar100: Path) -> None:
    cfg = hydra_cfg(tmp_path, ["data=cifar100", f"paths.data_dir={tmp_path / 'data'}"])
    assert cfg.data.data_dir == str(tmp_path / "data" / "cifar100")
    assert (cfg.data.batch_size, cfg.data.val_size, cfg.data.padding) == (128, 5000, 4)
    cfg = hydra_cfg(tmp_path, ["data=cifar100", "debug=smoke", f"data.data_dir={tiny_cifar100}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, CIFAR100DataModule)
    dm.setup()
    assert dm.num_classes == 100 and len(dm.splits.train_labels) == 64
