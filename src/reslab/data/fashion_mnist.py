"""Fashion-MNIST from its four idx files (plain or gzipped), found in the folders of ``data_dir``
(or torchvision's layout under one); downloaded into the first only when none has them. The
config's default searches the project's data folder, then Debian's ``dataset-fashion-mnist``; a
folder the user gives is the only one read (never another copy in its place)."""

import gzip
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import FashionMNIST

from reslab.data.base import InMemoryDataModule

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an idx file (``.gz`` or not), checked against its own header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip raises these for truncated or non-gzip files
        raise ValueError(f"idx file '{path}' cannot be read: {err}") from err
    if len(raw) < 4 or raw[:3] != bytes((0, 0, 8)):  # 8: uint8, the type of every file
        raise ValueError(
            f"idx file '{path}' has magic number {raw[:4].hex() or 'none'}; expected 0000 then a "
            "type code (08 for uint8) and the number of dimensions, e.g. 00000803 for images"
        )
    header = 4 + 4 * raw[3]  # raw[3] dimensions, each a big-endian uint32
    shape = tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(4, header, 4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(
            f"idx file '{path}' is {len(raw)} bytes but its header {shape} needs {expected}: "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


class FashionMNISTDataModule(InMemoryDataModule):
    """Fashion-MNIST: 60k training and 10k test 28×28 grayscale images of 10 classes."""

    name = "fashion_mnist"
    num_classes = 10
    in_channels = 1
    image_size = 28

    def __init__(self, data_dir: str | Path | Sequence[str | Path], **kwargs: Any) -> None:
        folders = [data_dir] if isinstance(data_dir, str | Path) else list(data_dir)
        if not folders:
            raise ValueError("data.data_dir=[] is not valid; valid: a folder, or folders in turn")
        super().__init__(folders[0], **kwargs)  # (the download's folder)
        self.folders = [Path(f).expanduser().absolute() for f in folders]

    def candidate_dirs(self) -> list[Path]:
        return [d for f in self.folders for d in (f, f / "FashionMNIST" / "raw")]

    def find_files(self) -> dict[str, Path] | None:
        """The four files (plain or .gz), from the first folder that has all of them."""
        for folder in self.candidate_dirs():
            paths = {key: (folder / stem, folder / f"{stem}.gz") for key, stem in FILES.items()}
            found = {key: next((p for p in two if p.is_file()), None) for key, two in paths.items()}
            if None not in found.values():
                return found
        return None

    def _missing(self) -> str:
        return "" if self.find_files() else "the four idx files are missing"

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self.fetch(self._missing, partial(FashionMNIST, download=True))  # it fetches all four
        files = self.find_files()
        tensors = []
        for split in ("train", "test"):
            images, labels = read_idx(files[f"{split}_images"]), read_idx(files[f"{split}_labels"])
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise ValueError(
                    f"Fashion-MNIST {split} files hold images {images.shape} and labels "
                    f"{labels.shape}; expected (N, 28, 28) and (N,)"
                )
            tensors += [torch.tensor(images).unsqueeze(1), torch.tensor(labels, dtype=torch.int64)]
        return tuple(tensors)

    def _where_message(self, why: str) -> str:
        searched = ", ".join(f"'{d}'" for d in self.candidate_dirs())
        return (
            f"Fashion-MNIST not found ({why}); searched {searched} for "
            f"{', '.join(FILES.values())} (optionally .gz). Install Debian's package "
            "(apt-get install dataset-fashion-mnist) or put the files in data.data_dir."
        )
