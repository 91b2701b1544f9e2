"""ImageNet (ILSVRC 2012) from ``data_dir/{train,val}/<class>/*.JPEG`` (labels: the sorted
class folders' indices), with the paper's recipe (section 3.4). Workers decode and crop in uint8;
``on_after_batch_transfer`` normalises and adds the colour noise on the training device. Each
training image's draws (scale, crop, flip, colour noise) come from the seed, the iteration and its
place in the global batch alone (:class:`TrainOrder`), and the order from the seed and the epoch:
a run resumed mid-epoch, or split over other ranks, sees the uninterrupted run's batches. The
paper reports on the val set, so ``test/error`` is the val folder again, with 10 crops."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets.folder import IMG_EXTENSIONS as IMAGE_EXTENSIONS  # Pillow decodes all
from torchvision.datasets.folder import has_file_allowed_extension, pil_loader
from torchvision.transforms import v2

from reslab.data.augment import draw_key
from reslab.data.base import BatchLoader, require_batch_split, require_ints
from reslab.validation import is_int, require_choice, require_int

log = logging.getLogger(__name__)

# The usual per-channel statistics of ImageNet (torchvision, fb.resnet.torch), pixels in [0, 1].
CHANNEL_MEAN = (0.485, 0.456, 0.406)
CHANNEL_STD = (0.229, 0.224, 0.225)
# Principal components of ImageNet's RGB pixels in [0, 1] (fb.resnet.torch's): eigenvalues and
# eigenvectors (columns), for Krizhevsky et al.'s (2012) colour augmentation: alpha ~ N(0, 0.1).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# Set, not inherited: in a joblib (loky) job of hydra/launcher=local the default context cannot
# start DataLoader workers. Linux forks (the file lists are shared, not copied).
WORKER_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"
_is_image = partial(has_file_allowed_extension, extensions=IMAGE_EXTENSIONS)  # any case


@dataclass
class ImageList(Dataset):
    """A split's files (relative to ``root``) and int64 labels, as numpy arrays: forked
    workers share them without copying."""

    root: Path
    files: np.ndarray
    labels: np.ndarray
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int | tuple[int, int]) -> tuple:
        """(``transform`` of image ``i``, its label): uint8 RGB (3, H, W) in H, W, C memory order
        (fastest to resize), whatever the format (a PNG named .JPEG; grey, CMYK become RGB); its
        random draws come from torch's generator. ``i`` = (index, key), :class:`TrainOrder`'s:
        (image, label, alpha), every draw from ``key`` alone, alpha (3,) ~ N(0, 0.1) the
        image's colour noise (Krizhevsky et al.'s), torch's generator left as it was."""
        if isinstance(i, tuple):
            index, key = i
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key)
                image, label = self[index]
                return image, label, torch.randn(3) * 0.1
        try:
            pixels = np.array(pil_loader(self.path(i)))  # Pillow's decoding, as RGB
        except (OSError, ValueError, SyntaxError) as err:  # unknown format, truncated, corrupt
            raise ValueError(f"cannot decode image '{self.path(i)}': {err}") from err
        return self.transform(torch.from_numpy(pixels).permute(2, 0, 1)), int(self.labels[i])

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.files[i])

    def subset(self, n: int | None, seed: int) -> ImageList:
        """A fixed random subset of ``n`` images drawn with ``seed``, in folder order (all of
        them when ``n`` is None or larger)."""
        if n is None or n >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        index = order[:n].sort().values.numpy()
        return ImageList(self.root, self.files[index], self.labels[index])


def scan_class_folders(folder: Path) -> tuple[list[str], ImageList]:
    """Sorted class folder names of ``folder`` and its images (``IMAGE_EXTENSIONS``, any case).
    Other files are skipped with a warning naming them, hidden ones silently; a class folder
    without images, or no class folders, is an error."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet folder '{folder}' is missing: expected '{folder}/<class>/*.JPEG' with one "
            "folder per class (such as n01440764)"
        )
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if not classes:
        loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
        hint = (
            f"; it holds {len(loose)} images directly (such as '{loose[0]}'): ImageNet's val "
            "images come in one flat folder, sort them into class folders with the devkit's "
            "ground truth (for example with the widely used valprep.sh)"
            if loose
            else ""
        )
        raise ValueError(
            f"no class folders in '{folder}': expected '{folder}/<class>/*.JPEG', e.g. "
            f"'{folder}/n01440764/n01440764_10026.JPEG'{hint}"
        )
    files, labels, skipped, empty = [], [], [], []
    for label, name in enumerate(classes):
        inside = sorted(os.scandir(folder / name), key=lambda e: e.name)
        inside = [(e.name, e.is_file() and _is_image(e.name)) for e in inside if e.name[0] != "."]
        files += [f"{name}/{entry}" for entry, image in inside if image]
        skipped += [f"{name}/{entry}" for entry, image in inside if not image]
        labels += [label] * (len(files) - len(labels))
        if not any(image for _, image in inside):
            empty.append(name)
    extensions = f"{', '.join(IMAGE_EXTENSIONS)}, in any case"
    if skipped:
        warnings.warn(
            f"skipping {len(skipped)} non-image entries in '{folder}': "
            f"{_some(folder, skipped)} (images end in {extensions})",
            stacklevel=2,
        )
    if empty:
        raise ValueError(
            f"{len(empty)} class folder(s) without images: {_some(folder, empty)}; every class "
            f"folder needs at least one image ({extensions})"
        )
    paths = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
    return classes, ImageList(folder, paths, np.array(labels, dtype=np.int64))


def _some(folder: Path, names: list[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(f"'{folder / n}'" for n in names[:5]) + more


def eval_crops(image: torch.Tensor, crop_size: int, resize: int, crops: int) -> torch.Tensor:
    """Shorter side resized to ``resize`` (bilinear, antialiased), then the centre crop (3, c, c)
    (offsets rounded down) or 10 (10, 3, c, c): top-left, top-right, bottom-left, bottom-right,
    centre, then those five mirrored (crop k + 5 mirrors crop k)."""
    c = crop_size
    image = TF.resize(image, [resize], antialias=True)
    h, w = image.shape[-2:]
    top, left = (h - c) // 2, (w - c) // 2
    centre = image[..., top : top + c, left : left + c]
    if crops == 1:
        return centre
    corners = [image[..., y : y + c, x : x + c] for y in (0, h - c) for x in (0, w - c)]
    five = torch.stack([*corners, centre])
    return torch.cat([five, five.flip(-1)])


class EvalShard(DistributedSampler):
    """Rank r of n evaluates images r, r + n, ...: every image once over the ranks (Lightning's
    DistributedSampler pads to equal shares, counting some twice; it keeps a subclass as it
    is). Batch counts may differ by one: evaluation runs no collective per batch."""

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:  # (a rank of more ranks than images: 0, not Lightning's assert)
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class TrainOrder(DistributedSampler):
    """The training images of rank r of n: places r, r + n, ... of each global batch of
    ``batch_size``, in :class:`~reslab.data.base.BatchLoader`'s order (a permutation drawn from
    ``seed`` and the epoch), from batch ``batches_done()`` (the trainer's iteration) to its
    epoch's end; each item (image index, :func:`~reslab.data.augment.draw_key` of the seed, the
    iteration and the place). Lightning keeps a DistributedSampler subclass as it is."""

    def __init__(
        self, dataset: ImageList, batch_size: int, seed: int, rank: int, world: int,
        batches_done: Callable[[], int],
    ) -> None:  # fmt: skip
        super().__init__(dataset, num_replicas=world, rank=rank, seed=seed, drop_last=True)
        n = torch.arange(len(dataset))
        self.order = BatchLoader(n, n, batch_size, shuffle=True, drop_last=True, seed=seed,
                                 rank=rank, world_size=world)  # fmt: skip
        self.batch_size, self.batches_done = batch_size, batches_done

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not (per_epoch := len(self.order)):
            return
        first = self.batches_done()
        places = range(self.rank, self.batch_size, self.num_replicas)
        for batch in range(first, (first // per_epoch + 1) * per_epoch):
            for index, place in zip(self.order._index(batch).tolist(), places, strict=True):
                yield index, draw_key(self.seed, batch, place)

    def __len__(self) -> int:
        return len(self.order) * len(range(self.rank, self.batch_size, self.num_replicas))


class TrainLoader(DataLoader):
    """A DataLoader of :class:`TrainOrder`: Lightning resumes it mid-epoch (the position is the
    trainer's iteration; the state only checks that the order is the same)."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.order.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.order.load_state_dict(state)


class ImageNetDataModule(L.LightningDataModule):
    """ImageNet's DataModule; conf/data/imagenet.yaml says what each option does (``batch_size``
    is global, ``eval_batch_size`` per process)."""

    name: str = "imagenet"
    in_channels: int = 3
    num_classes: int = 1000
    image_size: int = 224

    def __init__(
        self, data_dir: str | Path, batch_size: int = 256, val_size: int | None = None,
        split_seed: int = 0, train_subset: int | None = None, augment: bool = True,
        crop_size: int = 224, scale: Sequence[int] = (256, 480), eval_resize: int = 256,
        normalize: str = "pixel_mean", mean_images: int = 10_000, color_augment: bool = True,
        val_crops: int = 1, test_crops: int = 10, eval_batch_size: int = 50,
        num_workers: int = 4, seed: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        require_ints(1, batch_size=batch_size, eval_batch_size=eval_batch_size)
        require_ints(1, crop_size=crop_size, mean_images=mean_images)
        require_ints(0, num_workers=num_workers)
        require_int("data.val_size", val_size, 0, optional=True)
        require_int("data.train_subset", train_subset, 1, optional=True)
        pair = tuple(scale) if isinstance(scale, Sequence) and not isinstance(scale, str) else ()
        if len(pair) != 2 or not all(map(is_int, pair)) or not crop_size <= pair[0] <= pair[1]:
            raise ValueError(
                f"data.scale must be two integers [min, max] with data.crop_size={crop_size} <= "
                f"min <= max (the paper: [256, 480]), got {scale!r}"
            )
        note = f"(data.crop_size={crop_size})"
        require_int("data.eval_resize", eval_resize, crop_size, note=note)
        require_choice("data.normalize", normalize, ("pixel_mean", "channel"))
        require_choice("data.val_crops", val_crops, (1, 10))
        require_choice("data.test_crops", test_crops, (1, 10))
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.train_subset = val_size, split_seed, train_subset
        self.augment, self.color_augment = augment, color_augment
        self.crop_size, self.image_size = crop_size, crop_size
        self.scale, self.eval_resize = (pair[0], pair[1]), eval_resize
        self.normalize, self.mean_images = normalize, mean_images
        self.val_crops, self.test_crops = val_crops, test_crops
        self.num_workers, self.seed = num_workers, seed
        self.classes: list[str] = []
        self.train_images = self.val_images = self.test_images = None  # ImageLists after setup
        self.mean = self.std = None  # (x - mean) / std, x: float pixels (0..255) on the device
        # (3, 3): column j is eigenvector j × eigenvalue j, in pixels: noise = alpha @ lighting.T
        self.lighting = torch.tensor(PCA_EIGVEC) * torch.tensor(PCA_EIGVAL) * 255

    def setup(self, stage: str | None = None) -> None:
        if self.train_images is not None:
            return
        if not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"ImageNet not found: data.data_dir '{self.data_dir}' does not exist. Put the "
                f"images in '{self.data_dir}/train/<class>/*.JPEG' and "
                f"'{self.data_dir}/val/<class>/*.JPEG' (class folders such as n01440764; the val "
                "images sorted into the same class folders), or set data.data_dir. ImageNet "
                "cannot be downloaded automatically: get ILSVRC2012 from https://image-net.org "
                "after accepting its terms."
            )
        classes, train = scan_class_folders(self.data_dir / "train")
        val_classes, val = scan_class_folders(self.data_dir / "val")
        if val_classes != classes:
            missing = sorted(set(classes) - set(val_classes))
            extra = sorted(set(val_classes) - set(classes))
            raise ValueError(
                f"the class folders of '{self.data_dir / 'val'}' differ from those of "
                f"'{self.data_dir / 'train'}': missing in val: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}; only in val: {extra[:10]}"
                f"{' ...' if len(extra) > 10 else ''}"
            )
        train = train.subset(self.train_subset, self.split_seed)
        # val_size 0: no validation, but the test still needs the whole val folder
        test = val.subset(self.val_size or None, self.split_seed)
        if self.normalize == "channel":
            mean, std = (torch.tensor(v).view(3, 1, 1) * 255 for v in (CHANNEL_MEAN, CHANNEL_STD))
        else:
            mean, std = self.pixel_mean(train), torch.full((3, 1, 1), 255.0)
        # set last, so that a setup() that failed half-way runs again in full
        self.classes, self.num_classes = classes, len(classes)
        self.mean, self.std = mean, std
        self.val_images = test.subset(0, self.split_seed) if self.val_size == 0 else test
        self.test_images = test  # ImageNet's errors are reported on the val set
        self.train_images = train

    def check_processes(self, world_size: int, images: int | None = None) -> None:
        """Each process needs an evaluation image: of a loader's ``images``, else (checks.py,
        before the data loads) of ``val_size``."""
        n = self.val_size if images is None else images
        if n is not None and 0 < n < world_size:
            shown = "null" if self.val_size is None else self.val_size
            raise ValueError(
                f"data.val_size={shown}: {n} evaluation images cannot be shared by {world_size} "
                f"processes; valid: 0, null or an integer >= {world_size} (null: the whole val "
                f"folder, which then needs at least {world_size} images)"
            )

    @property
    def has_val(self) -> bool:
        """Whether there are validation images (known after ``setup``)."""
        return self.val_images is not None and len(self.val_images) > 0

    def train_dataloader(self) -> DataLoader:
        world = self._world()
        require_batch_split(self.batch_size, world, "processes")
        crops = None if self.augment else 1
        return self._loader(self.train_images, crops, self.batch_size // world, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_images is not None and not len(self.val_images):
            return []
        return self._loader(self.val_images, self.val_crops, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """The val images (the whole folder when ``val_size`` is 0), ``test_crops`` crops each."""
        return self._loader(self.test_images, self.test_crops, self.eval_batch_size, train=False)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """uint8 (B, 3, c, c) or (B, crops, 3, c, c) → float32 (x - mean) / std; a training batch
        (images, labels, alpha) gets the PCA lighting noise of its images' alpha (B, 3)."""
        images, labels, *alpha = batch
        if self.mean is None:  # (set with self.std)
            raise RuntimeError("ImageNetDataModule: call setup() before using its batches")
        if self.mean.device != images.device:  # once, not every batch
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
            self.lighting = self.lighting.to(images.device)
        x = images.float() - self.mean
        if alpha and self.augment and self.color_augment:  # drawn with each image's crop
            x = x + (alpha[0].to(x.dtype) @ self.lighting.T)[:, :, None, None]
        return x / self.std, labels

    def pixel_mean(self, train: ImageList) -> torch.Tensor:
        """Per-pixel mean (3, c, c) of the centre crops of up to ``mean_images`` of ``train``,
        cached in ``data_dir`` under a key of the images and sizes."""
        size, resize = self.crop_size, self.eval_resize
        images = train.subset(self.mean_images, self.split_seed)
        key = b"".join([f"{size} {resize}\n".encode(), *(f + b"\n" for f in images.files)])
        digest = hashlib.sha1(key).hexdigest()[:12]
        path = self.data_dir / f"pixel_mean_{size}px_resize{resize}_{len(images)}images_{digest}.pt"
        if path.is_file():
            try:  # the name holds the images' and sizes' key
                mean = torch.load(path, map_location="cpu", weights_only=True)["mean"]
                if mean.shape == (3, size, size):
                    return mean.float()
                raise ValueError(f"a mean of shape {tuple(mean.shape)}")
            except Exception as err:  # a truncated or foreign file: recompute and replace it
                why = str(err).splitlines()[0] if str(err) else type(err).__name__
                warnings.warn(f"cannot read mean cache '{path}' ({why}); recomputing", stacklevel=2)
        log.info("computing the per-pixel mean of %d training images", len(images))
        loader = self._loader(images, 1, 64, train=False, persistent=False, shard=False)
        mean = (sum(batch.double().sum(0) for batch, _ in loader) / len(images)).float()
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:  # atomic, so that DDP ranks computing it at once never read a half-written file
            torch.save({"mean": mean, "key": digest, "images": len(images)}, tmp)
            os.replace(tmp, path)
        except OSError as err:
            log.info("mean not cached (%s): '%s' is not writable; it stays in memory", err, path)
            tmp.unlink(missing_ok=True)
        return mean

    def _world(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _loader(
        self, images: ImageList | None, crops: int | None, batch_size: int, *, train: bool,
        persistent: bool = True, shard: bool = True,
    ) -> DataLoader:  # fmt: skip
        """``crops`` None: the paper's scale augmentation (shorter side resized to a uniform
        integer in ``scale``, a random ``crop_size`` square, mirrored with probability 1/2), else
        1 or 10 evaluation crops; with ``shard`` a distributed evaluation takes this rank's
        ``EvalShard``; ``train``: a :class:`TrainLoader` of this rank's :class:`TrainOrder`
        (``batch_size`` per rank). Each loader seeds its workers from a generator of its own,
        never torch's global one: the mean cache or an evaluation leaves training's draws as
        they were."""
        if images is None:
            raise RuntimeError("ImageNetDataModule: call setup() before asking for its loaders")
        size, resize = self.crop_size, self.eval_resize
        if crops is None:
            scale = v2.RandomResize(self.scale[0], self.scale[1] + 1, antialias=True)
            transform = v2.Compose([scale, v2.RandomCrop(size), v2.RandomHorizontalFlip()])
        else:
            transform = partial(eval_crops, crop_size=size, resize=resize, crops=crops)
        dataset, world, sampler = replace(images, transform=transform), self._world(), None
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if train:
            steps = lambda: self.trainer.global_step if self.trainer is not None else 0  # noqa: E731
            sampler = TrainOrder(dataset, batch_size * world, self.seed, rank, world, steps)
        elif shard and world > 1:
            self.check_processes(world, len(images))
            sampler = EvalShard(dataset, world, rank, shuffle=False)
        context = multiprocessing.get_context(WORKER_START_METHOD) if self.num_workers else None
        return (TrainLoader if train else DataLoader)(
            dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers, multiprocessing_context=context,
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )  # fmt: skip
