"""CIFAR-10 and CIFAR-100 from the standard python pickles (dicts of ``data``: N×3072 uint8, the
red, green and blue planes, and ``labels`` or CIFAR-100's ``fine_labels``), read by an unpickler
that accepts only the types the format needs, so a crafted file cannot run code."""

import importlib
import io
import pickle
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets.utils import download_and_extract_archive

from reslab.data.base import InMemoryDataModule

# What numpy's arrays and scalars need at any pickle protocol (0-5), and nothing else: an array
# (_reconstruct, ndarray, dtype; protocol 5's _frombuffer), a scalar label (numpy.int64: scalar),
# bytes pickled by Python 3 at protocols 0-2 (_codecs.encode). numpy 2 renamed numpy.core to
# numpy._core; a file names the one its writer had.
_NUMPY_INTERNALS = {("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                    ("numeric", "_frombuffer")}  # fmt: skip
_ALLOWED_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    (f"{core}.{module}", name)
    for core in ("numpy.core", "numpy._core")
    for module, name in _NUMPY_INTERNALS
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that the CIFAR format never needs."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays, "
                "lists, numbers and strings"
            )
        if module.startswith(("numpy.core.", "numpy._core.")):  # this numpy's own
            core = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
            return getattr(importlib.import_module(f"{core}.{module.rsplit('.', 1)[1]}"), name)
        return super().find_class(module, name)


def load_pickle_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one CIFAR pickle batch."""
    try:
        batch = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except UnsafePickleError as err:
        raise ValueError(f"CIFAR batch '{path}' is not safe to load: {err}") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as err:
        raise ValueError(
            f"CIFAR batch '{path}' is truncated or not a CIFAR pickle: {err}; replace it with the "
            "original file (download the dataset again)"
        ) from err
    if not isinstance(batch, dict):
        raise ValueError(f"CIFAR batch '{path}' holds a {type(batch).__name__}, not a dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data = np.asarray(batch.get("data", ()))
    labels = np.asarray(batch.get("labels", batch.get("fine_labels", ())))
    expected = (*data.shape[:1], 3 * 32 * 32)
    if data.dtype != np.uint8 or data.shape != expected or labels.shape != expected[:1]:
        raise ValueError(
            f"CIFAR batch '{path}' holds keys {sorted(batch)}, data {data.dtype} {data.shape} and "
            f"labels {labels.shape}; expected 'data' and 'labels' (CIFAR-10) or 'fine_labels' "
            "(CIFAR-100): uint8 (N, 3072) and (N,)"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10: 50k training and 10k test 32×32 colour images of 10 classes."""

    name = "cifar10"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5, folder = "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"
    train_files, test_files = tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",)

    def _missing(self) -> str:
        folder = self.data_dir / self.folder
        missing = [f for f in (*self.train_files, *self.test_files) if not (folder / f).is_file()]
        return f"missing {', '.join(missing)}" if missing else ""

    def _where_message(self, why: str) -> str:
        return (
            f"{self.name} not found in '{self.data_dir / self.folder}': {why}. Download "
            f"{self.url}, extract it into '{self.data_dir}' (it makes the folder "
            f"'{self.folder}'), or set data.data_dir to a folder that has it."
        )

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self.fetch(self._missing, partial(download_and_extract_archive, self.url, md5=self.md5))
        folder = self.data_dir / self.folder

        def read(files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            parts = zip(*(load_pickle_batch(folder / f) for f in files), strict=True)
            images, labels = map(np.concatenate, parts)  # (checked: InMemoryDataModule)
            return torch.from_numpy(images), torch.from_numpy(labels)

        return (*read(self.train_files), *read(self.test_files))


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: 50k training and 10k test 32×32 colour images of 100 classes (fine labels)."""

    name = "cifar100"
    num_classes = 100
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    md5, folder = "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"
    train_files, test_files = ("train",), ("test",)
