"""In-memory datasets: each split one uint8 tensor, a batch one index into it, augmented whole
on the training device (``on_after_batch_transfer``): no per-image Python, PIL or workers."""

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from reslab.data.augment import crop_flip_draws, subtract_mean, subtract_mean_crop_flip
from reslab.validation import require_int


def require_ints(low: int, **values: object) -> None:
    """Each ``data.<key>`` an integer >= ``low`` (a ``ValueError`` from ``require_int``)."""
    for key, value in values.items():
        require_int(f"data.{key}", value, low)


def require_batch_split(batch_size: int, world: int, ranks: str) -> None:
    """The global ``batch_size`` splits evenly over ``world`` ``ranks`` (devices, processes)."""
    if batch_size % world:
        raise ValueError(
            f"data.batch_size={batch_size} (the global batch) is not divisible by the "
            f"{world} {ranks}; choose a multiple of {world}"
        )


@dataclass
class Splits:
    """uint8 images (N, C, H, W) and int64 labels (N,) of each split; val may be empty."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


class BatchLoader:
    """Batches of (images, labels) sliced from in-memory tensors. With ``shuffle`` epoch e's order
    is a permutation drawn from ``seed`` and e, the same on every rank; rank r of ``world_size``
    takes every world_size-th image of each global batch (none of an evaluation's last batch when
    it holds r images or fewer: that rank has one batch less). A pass starts at batch
    ``batches_done()`` (the trainer's iteration; None: the next epoch's first), so a run resumed
    at iteration k sees an uninterrupted one's batches. ``fused`` = K > 1
    (``module.fused_iterations``): each item stacks the next K batches, images (K, B, C, H, W)
    and labels (K, B), running on into the next epoch's order; a pass yields the groups that
    start in its epoch, the last cut at ``stop_at()`` batches (``trainer.max_steps``; -1 or
    None: no end)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
        drop_last: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
        batches_done: Callable[[], int] | None = None, fused: int = 1,
        stop_at: Callable[[], int | None] | None = None,
    ) -> None:  # fmt: skip
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_done, self.fused, self.stop_at = batches_done, fused, stop_at
        self.epoch = 0
        self._orders: dict[int, torch.Tensor] = {}

    def _batches(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __len__(self) -> int:
        # a rank with no image of the last batch (world_size of them) has one batch less
        batches = self._batches()
        empty = batches > 0 and len(self.labels) - (batches - 1) * self.batch_size <= self.rank
        return math.ceil((batches - empty) / self.fused)

    def _order(self, epoch: int) -> torch.Tensor:
        """The image order of ``epoch`` on the images' device (the last two kept)."""
        if epoch not in self._orders:
            n, g = len(self.labels), torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            # once per epoch; indexing stays on the device
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = order.to(self.images.device)
        return self._orders[epoch]

    def _index(self, batch: int) -> torch.Tensor:
        """This rank's image indices of batch number ``batch`` of the whole sequence."""
        epoch, i = divmod(batch, self._batches())
        index = self._order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        return index[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        per_epoch = self._batches()
        if not per_epoch:
            return
        first = self.batches_done() if self.batches_done is not None else self.epoch * per_epoch
        self.epoch = first // per_epoch + 1
        stop = self.stop_at() if self.stop_at is not None and self.fused > 1 else None
        for start in range(first, self.epoch * per_epoch, self.fused):  # those in this epoch
            last = start + self.fused if stop is None or stop < 0 else min(start + self.fused, stop)
            if last <= start:
                return
            group = [self._index(b) for b in range(start, last)]
            if not len(group[0]):  # none of the last batch's images is this rank's
                return
            index = group[0] if self.fused == 1 else torch.stack(group)  # (B,) or (K, B)
            yield self.images[index], self.labels[index]

    # Lightning resumes a loader mid-epoch through this interface; the position comes from
    # ``batches_done``, the state only checks that the order is the same.
    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "batches_per_epoch": len(self), "images": len(self.labels)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state != self.state_dict():
            rank_zero_warn(
                f"resuming with a different training data order: the checkpoint's loader had "
                f"{state}, this one has {self.state_dict()}"
            )


class InMemoryDataModule(L.LightningDataModule):
    """Base of every CIFAR-size dataset: subclasses implement ``load`` and set the class facts;
    conf/data/_in_memory.yaml says what each option does. With ``on_device`` the whole dataset
    (uint8; CIFAR-10 takes 180 MB) moves to the training GPU once: a batch is an index there."""

    name: str = "dataset"
    fuses_iterations = True  # its loader serves module.fused_iterations (see BatchLoader)
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32  # side of the (square) images the network sees

    def __init__(
        self, data_dir: str | Path, batch_size: int = 128, val_size: int = 5000,
        split_seed: int = 0, train_subset: int | None = None, augment: bool = True,
        padding: int = 4, eval_batch_size: int = 1000, download: bool = True, seed: int = 0,
        on_device: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        require_ints(1, batch_size=batch_size, eval_batch_size=eval_batch_size)
        require_ints(0, val_size=val_size, padding=padding)
        require_int("data.train_subset", train_subset, 1, optional=True)
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.train_subset = val_size, split_seed, train_subset
        self.augment, self.padding = augment, padding
        self.download, self.seed, self.on_device = download, seed, on_device
        self.splits: Splits | None = None
        self.mean: torch.Tensor | None = None

    def load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(train images, train labels, test images, test labels): uint8 (N, C, H, W), int64."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        x, y, test_x, test_y = self.load()  # x, y: the training images before the split
        for split, images, labels in (("train", x, y), ("test", test_x, test_y)):
            self.check_split(split, images, labels)
        if self.val_size >= len(y):
            raise ValueError(
                f"data.val_size={self.val_size} leaves no training images "
                f"({self.name} has {len(y)}); use a value below {len(y)}"
            )
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        val, train = order[: self.val_size].sort().values, order[self.val_size :].sort().values
        train = train[: self.train_subset]
        self.splits = Splits(x[train], y[train], x[val], y[val], test_x, test_y)
        # The paper's only normalisation: the per-pixel mean of the training images.
        self.mean = self.splits.train_images.float().mean(0)

    def check_split(self, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
        """``load``'s uint8 images (N, ``in_channels``, ``image_size``, ``image_size``) and N
        labels in 0 .. ``num_classes`` - 1, else a ``ValueError`` naming the split's content."""
        size, channels = self.image_size, self.in_channels
        expected = (len(labels), channels, size, size)
        if images.dtype != torch.uint8 or tuple(images.shape) != expected:
            raise ValueError(
                f"{self.name} {split} images are {images.dtype} {tuple(images.shape)}; expected "
                f"uint8 (N, {channels}, {size}, {size}) with N = {len(labels)} labels "
                f"(data.data_dir={self.data_dir})"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"{self.name} {split} labels run from {int(labels.min())} to "
                f"{int(labels.max())}; valid: 0 to {self.num_classes - 1} "
                f"(data.data_dir={self.data_dir})"
            )

    @property
    def has_val(self) -> bool:
        """Whether there is a validation split (known after ``setup``)."""
        return self.splits is not None and len(self.splits.val_labels) > 0

    def _placed(self) -> Splits:
        """The splits, moved once to the training device when it is a GPU and ``on_device``."""
        assert self.splits is not None, "call setup() first"
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if self.on_device and device.type != "cpu" and self.splits.train_images.device != device:
            self.splits = Splits(*(t.to(device) for t in vars(self.splits).values()))
            self.mean = self.mean.to(device)
        return self.splits

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> BatchLoader:
        splits, (rank, world), trainer = self._placed(), self._world(), self.trainer
        require_batch_split(self.batch_size, world, "devices")
        if (n := len(splits.train_labels)) < self.batch_size:  # no whole batch: no iteration
            raise ValueError(
                f"data.batch_size={self.batch_size} is larger than the {n} training images "
                f"(data.train_subset={self.train_subset}, data.val_size={self.val_size}); "
                f"valid: a batch of at most {n} images, or more training images"
            )
        module = trainer.lightning_module if trainer is not None else None
        return BatchLoader(
            splits.train_images, splits.train_labels, self.batch_size,
            shuffle=True, drop_last=True, seed=self.seed, rank=rank, world_size=world,
            batches_done=lambda: self.trainer.global_step if self.trainer is not None else 0,
            fused=int(getattr(module, "fused_iterations", 1)),  # batches per training step
            stop_at=lambda: self.trainer.max_steps if self.trainer is not None else None,
        )  # fmt: skip

    def _eval_loader(self, split: str) -> BatchLoader:
        splits, (rank, world) = self._placed(), self._world()
        return BatchLoader(
            getattr(splits, f"{split}_images"), getattr(splits, f"{split}_labels"),
            self.eval_batch_size * world, shuffle=False, drop_last=False, rank=rank,
            world_size=world,
        )  # fmt: skip

    def val_dataloader(self) -> BatchLoader | list:
        return self._eval_loader("val") if len(self._placed().val_labels) else []

    def test_dataloader(self) -> BatchLoader:
        return self._eval_loader("test")

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        images, labels = batch
        assert self.mean is not None, "call setup() first"
        if self.mean.device != images.device:
            self.mean = self.mean.to(images.device)  # once, not every batch
        if self.augment and self.trainer is not None and self.trainer.training:
            # the K batches of a fused step (K, B, C, H, W) at once, drawn as K batches in turn;
            # this rank's images are places r, r + N, ... of each global batch (BatchLoader)
            (rank, world), k = self._world(), images.shape[0] if images.dim() == 5 else 1
            places = torch.arange(rank, images.shape[-4] * world, world, device=images.device)
            draws = crop_flip_draws(self.seed, self.trainer.global_step, k, places, self.padding)
            flat = images.flatten(0, -4)
            crops = subtract_mean_crop_flip(flat, self.mean, self.padding, draws=draws.flatten())
            return crops.view(images.shape), labels
        return subtract_mean(images, self.mean), labels

    def fetch(self, missing: Callable[[], str], download: Callable[[str], object]) -> None:
        """When ``missing()`` says what is missing: ``download(data_dir)`` (folder created) if
        ``data.download``; a missing folder without it, a failed download, or files still
        missing: a ``FileNotFoundError`` saying where they go."""
        if not missing():
            return
        if not self.download and not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"data.data_dir '{self.data_dir}' does not exist (and data.download=false); "
                f"create it and put the {self.name} files there, or set data.data_dir"
            )
        if self.download:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                download(str(self.data_dir))
            except Exception as err:  # no network, a proxy, a bad archive: say what to do
                raise FileNotFoundError(self._where_message(f"downloading failed ({err})")) from err
        if why := missing():
            raise FileNotFoundError(self._where_message(why))
