import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR_BATCH, make_cifar10, write_cifar_batch, write_idx
from hypothesis import given, settings
from hypothesis import strategies as st

from reslab.data import BatchLoader, CIFAR10DataModule, FashionMNISTDataModule, SyntheticDataModule
from reslab.data.cifar import load_pickle_batch
from reslab.data.fashion_mnist import DEBIAN_DIR, read_idx

# --- CIFAR-10 ---------------------------------------------------------------------------------


def test_cifar_batch_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(tmp_path / "data_batch_1", images, [3, 1, 4, 1])
    got, labels = load_pickle_batch(tmp_path / "data_batch_1")
    assert np.array_equal(got, images)  # row = 1024 red, 1024 green, 1024 blue values
    assert labels.tolist() == [3, 1, 4, 1]


def test_cifar10_splits_and_mean(tiny_cifar10: Path) -> None:
    dm = CIFAR10DataModule(tiny_cifar10, val_size=40, download=False)
    dm.setup()
    s = dm.splits
    assert s.train_images.shape == (5 * CIFAR_BATCH - 40, 3, 32, 32)
    assert s.train_images.dtype == torch.uint8 and s.train_labels.dtype == torch.int64
    assert s.val_images.shape[0] == 40 and s.test_images.shape[0] == CIFAR_BATCH
    assert torch.allclose(dm.mean, s.train_images.float().mean(0))
    # the split is fixed by split_seed and train/val are disjoint parts of the 50k
    again = CIFAR10DataModule(tiny_cifar10, val_size=40, download=False)
    again.setup()
    assert torch.equal(again.splits.val_images, s.val_images)
    everything = torch.cat([s.train_images, s.val_images]).flatten(1)
    assert torch.unique(everything, dim=0).shape[0] == 5 * CIFAR_BATCH


def test_cifar10_without_val_and_with_subset(tiny_cifar10: Path) -> None:
    dm = CIFAR10DataModule(tiny_cifar10, val_size=0, train_subset=50, download=False)
    dm.setup()
    assert len(dm.splits.train_labels) == 50 and len(dm.splits.val_labels) == 0
    assert dm.val_dataloader() == []


def test_cifar10_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    dm = CIFAR10DataModule(tmp_path, download=False)
    with pytest.raises(
        FileNotFoundError, match=r"missing data_batch_1.*test_batch.*cifar-10-python"
    ):
        dm.setup()


def test_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(tmp_path / "nowhere", download=False)
    with pytest.raises(FileNotFoundError, match=r"data.data_dir '.*nowhere' does not exist"):
        dm.setup()


LABEL_KINDS = {  # how writers hold the labels: lists of ints or numpy scalars, arrays
    "ints": lambda y: [int(v) for v in y],
    "numpy scalars": lambda y: [np.int64(v) for v in y],
    "uint8 scalars": lambda y: [np.uint8(v) for v in y],
    "int64 array": lambda y: np.asarray(y, dtype=np.int64),
    "int32 array": lambda y: np.asarray(y, dtype=np.int32),
}


@settings(max_examples=40, deadline=None)
@given(
    protocol=st.integers(0, pickle.HIGHEST_PROTOCOL),
    kind=st.sampled_from(sorted(LABEL_KINDS)),
    str_keys=st.booleans(),
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=5),
)
def test_a_cifar_batch_at_any_protocol_with_numpy_labels_loads(
    protocol: int, kind: str, str_keys: bool, labels: list[int]
) -> None:
    """Safe is not narrow: what numpy's arrays and scalars need at every pickle protocol (5's
    out-of-band buffers, numpy >= 2's module names) loads; other globals do not (below)."""
    images = np.random.default_rng(len(labels)).integers(0, 256, (len(labels), 3072), np.uint8)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    batch = {key("data"): images, key("labels"): LABEL_KINDS[kind](labels)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data_batch_1"
        path.write_bytes(pickle.dumps(batch, protocol=protocol))
        got, got_labels = load_pickle_batch(path)
    assert np.array_equal(got.reshape(len(labels), -1), images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == labels


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_crafted_pickle_is_refused_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": [np.int64(1), Evil()]}, protocol))
    with pytest.raises(ValueError, match=r"evil' is not safe to load: refusing to load"):
        load_pickle_batch(tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("split", "images", "labels", "said"),
    [
        ("test", (4, 1, 28, 28), [0, 1, 14, 2], "fashion_mnist test labels run from 0 to 14"),
        ("train", (4, 1, 28, 28), [0, 10, 3, 2], "fashion_mnist train labels run from 0 to 10"),
        ("train", (4, 1, 27, 27), [0, 1, 2, 3], r"train images are torch.uint8 \(4, 1, 27, 27\)"),
        ("test", (3, 1, 28, 28), [0, 1, 2, 3], r"test files hold images \(3, 28, 28\) and labels"),
    ],
)
def test_what_a_dataset_reads_is_checked_against_its_facts(
    tmp_path: Path, split: str, images: tuple, labels: list[int], said: str
) -> None:
    """Every in-memory dataset's files are checked as they are read (InMemoryDataModule): the
    images' shape and the labels' range; a test label outside 0-9 inflated test/error, a 27x27
    file trained."""
    good = {"train": ((6, 1, 28, 28), [0, 1, 2, 3, 4, 5]), "test": ((4, 1, 28, 28), [0, 1, 2, 3])}
    good[split] = (images, labels)
    for name, (shape, values) in good.items():
        prefix = "t10k" if name == "test" else "train"
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros(shape, np.uint8)[:, 0])
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.array(values) % 256)
    with pytest.raises(ValueError, match=said):
        FashionMNISTDataModule(tmp_path, val_size=1, download=False).setup()


def test_truncated_cifar_batch_names_the_file(tmp_path: Path) -> None:
    root = make_cifar10(tmp_path)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"data_batch_3' is truncated or not a CIFAR pickle"):
        CIFAR10DataModule(root, download=False).setup()


def test_crafted_pickle_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"evil' is not safe to load: refusing to load"):
        load_pickle_batch(tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()


def test_val_size_too_large(tiny_cifar10: Path) -> None:
    with pytest.raises(ValueError, match=r"data.val_size=5000 leaves no training images"):
        CIFAR10DataModule(tiny_cifar10, download=False).setup()


@pytest.mark.parametrize(
    ("key", "value"), [("batch_size", 0), ("val_size", -1), ("eval_batch_size", 0), ("padding", -4)]
)
def test_bad_numbers_are_refused(key: str, value: int, tiny_cifar10: Path) -> None:
    message = rf"data.{key}={value} is not valid; valid: an integer >= \d"
    with pytest.raises(ValueError, match=message):
        CIFAR10DataModule(tiny_cifar10, **{key: value})


# --- Fashion-MNIST ----------------------------------------------------------------------------


def _write_fashion(folder: Path, n: int = 30, compress: bool = True) -> None:
    rng = np.random.default_rng(1)
    suffix = ".gz" if compress else ""
    for split in ("train", "t10k"):
        write_idx(
            folder / f"{split}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 28, 28)),
            compress,
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n), compress)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_from_data_dir(tmp_path: Path, compress: bool) -> None:
    _write_fashion(tmp_path, compress=compress)
    dm = FashionMNISTDataModule(tmp_path, val_size=5, download=False)
    assert dm.find_files()["train_images"].parent == tmp_path
    dm.setup()
    assert dm.splits.train_images.shape == (25, 1, 28, 28)
    assert dm.splits.test_labels.shape == (30,)


def test_idx_wrong_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0f\x03" + bytes(100))
    with pytest.raises(ValueError, match=r"has magic number 00000f03"):
        read_idx(path)


def test_idx_truncated(tmp_path: Path) -> None:
    path = tmp_path / "images-idx3-ubyte"
    write_idx(path, np.zeros((10, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        read_idx(path)


def test_real_fashion_mnist_from_debian(tmp_path: Path) -> None:
    """The real dataset, as Debian's dataset-fashion-mnist installs it (.ci/run installs it)."""
    assert (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(), (
        "apt-get install dataset-fashion-mnist"
    )
    dm = FashionMNISTDataModule([tmp_path / "empty", DEBIAN_DIR], val_size=5000, download=False)
    dm.setup()
    s = dm.splits
    assert s.train_images.shape == (55_000, 1, 28, 28) and s.val_images.shape == (5_000, 1, 28, 28)
    assert s.test_images.shape == (10_000, 1, 28, 28)
    labels = torch.cat([s.train_labels, s.val_labels])
    assert torch.bincount(labels).tolist() == [6000] * 10  # the real set is balanced
    assert torch.bincount(s.test_labels).tolist() == [1000] * 10
    assert 60 < s.train_images.float().mean() < 80  # mostly dark background, real images


# --- batches ----------------------------------------------------------------------------------


def test_batch_loader_epochs_cover_everything_in_new_orders() -> None:
    images = torch.arange(100).reshape(100, 1, 1, 1)
    loader = BatchLoader(images, torch.arange(100), 16, shuffle=True, drop_last=True, seed=3)
    assert len(loader) == 6
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert len(first) == 96 and len(set(first.tolist())) == 96
    assert not torch.equal(first, second)
    assert all(torch.equal(x.flatten(), y) for x, y in loader)  # images travel with labels


def test_batch_loader_ranks_split_the_global_batch() -> None:
    labels = torch.arange(64)
    images = labels.reshape(64, 1, 1, 1)
    single = list(BatchLoader(images, labels, 16, shuffle=True, drop_last=True, seed=5))
    ranks = [
        list(
            BatchLoader(
                images, labels, 16, shuffle=True, drop_last=True, seed=5, rank=r, world_size=2
            )
        )
        for r in (0, 1)
    ]
    for step, (_, y) in enumerate(single):
        a, b = ranks[0][step][1], ranks[1][step][1]
        assert len(a) == len(b) == 8
        assert set(a.tolist()).isdisjoint(b.tolist())
        assert sorted(a.tolist() + b.tolist()) == sorted(y.tolist())


def test_eval_loader_keeps_the_last_partial_batch() -> None:
    loader = BatchLoader(
        torch.zeros(10, 1, 1, 1), torch.zeros(10), 4, shuffle=False, drop_last=False
    )
    assert [len(y) for _, y in loader] == [4, 4, 2]


def test_synthetic_data() -> None:
    dm = SyntheticDataModule(
        num_train=100, num_test=20, image_size=16, channels=1, classes=4, val_size=10
    )
    dm.setup()
    assert dm.splits.train_images.shape == (90, 1, 16, 16)
    assert dm.in_channels == 1 and dm.num_classes == 4
    assert int(dm.splits.train_labels.max()) <= 3


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 300), per_rank=st.integers(1, 64), world=st.integers(1, 8))
def test_an_evaluation_loader_gives_every_image_once_over_the_ranks_and_no_empty_batch(
    n: int, per_rank: int, world: int
) -> None:
    """Rank r of N takes places r, r + N, ... of each global batch of N x per_rank images: over
    the ranks every image once, no rank a batch without images (a rank with none of the last
    batch has one batch less, which its len says), as Figure 7's statistics need (an empty
    batch made the layer responses of a 257-image test set NaN under 2 ranks)."""
    images = torch.arange(n).view(n, 1, 1, 1)
    seen = []
    for rank in range(world):
        loader = BatchLoader(images, torch.arange(n), per_rank * world, shuffle=False,
                             drop_last=False, rank=rank, world_size=world)  # fmt: skip
        batches = list(loader)
        assert len(batches) == len(loader)
        assert all(len(labels) > 0 for _, labels in batches)
        seen += [int(i) for _, labels in batches for i in labels]
    assert sorted(seen) == list(range(n))
