"""The paper's CIFAR augmentation as a few batched tensor ops on whatever device holds the batch.

Section 4.2: "4 pixels are padded on each side, and a 32×32 crop is randomly sampled from the
padded image or its horizontal flip." Each image gets its own crop offset and its own flip.

The crop and the flip are one ``gather`` on each padded image seen as a flat row of pixels: a
linear index of the output's pixels (row ``top + i``, column ``left + j``, or ``left + w-1-j``
when mirrored) picks them all at once. ``subtract_mean_crop_flip``, which the DataModules use
in training, also writes the mean-subtracted images straight into the zero-padded buffer that
the crop reads from, instead of subtracting, padding and cropping in turn.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F


def subtract_mean(images: torch.Tensor, mean: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """Float images with the per-pixel mean (a C×H×W image on the images' device) subtracted,
    divided by ``scale``. The caller keeps ``mean`` on the device once, not per batch."""
    return (images.float() - mean) / scale


def _check(images: torch.Tensor, padding: int) -> None:
    if images.dim() != 4:
        raise ValueError(f"expected a batch of shape (N, C, H, W), got {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")


def _crop_flip_index(
    n: int,
    h: int,
    w: int,
    padding: int,
    flip: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draws each image's crop and flip, and returns them as an int64 (N, 1, H*W) index into
    its zero-padded image flattened to (H+2p)*(W+2p) pixels: output pixel (i, j) of image k
    comes from padded row ``top[k] + i``, column ``left[k] + j`` (``left[k] + w-1-j`` when
    mirrored). ``out``: an int64 (N, H, W) tensor to write the index into.

    One draw per image, ``torch.randint`` uniform in [0, (2p+1)² · 2) (without ``flip``:
    (2p+1)²), from ``generator`` on ``device``, decoded as ``mirrored = v % 2``, then
    ``left = (v // 2) % (2p+1)``, ``top = (v // 2) // (2p+1)``: ``top`` and ``left`` uniform
    in [0, 2p] and the flip with probability 1/2, all independent. One draw per image makes
    the draws of a batch of N·K images those of K batches of N drawn in turn (on the CPU), so
    K batches augmented at once are augmented exactly as one at a time."""
    side = 2 * padding + 1
    v = torch.randint(
        0, side * side * (2 if flip else 1), (n, 1), device=device, generator=generator
    )
    cols = torch.arange(w, device=device)
    if flip:
        mirrored = (v % 2).bool()
        v = v // 2
        cols = torch.where(mirrored, cols.flip(0), cols)  # (n, w)
    top, left = v // side, v % side
    cols = cols + left  # (n, w)
    rows = (top + torch.arange(h, device=device)) * (w + 2 * padding)  # (n, h): row starts
    return torch.add(rows[:, :, None], cols[:, None, :], out=out).view(n, 1, h * w)


def _take(padded: torch.Tensor, index: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The (N, C, H, W) pixels of each (N, C, H+2p, W+2p) padded image at ``index``; every
    channel of an image takes the same pixels."""
    n, c = padded.shape[:2]
    return padded.view(n, c, -1).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def random_crop_flip(
    images: torch.Tensor,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero-pad every image by ``padding`` pixels, take a random crop of the original size and
    mirror it horizontally with probability 1/2, independently for every image of the batch.

    Works for any dtype and device; ``generator`` (on the images' device) makes it repeatable.
    """
    _check(images, padding)
    n, _, h, w = images.shape
    index = _crop_flip_index(n, h, w, padding, flip, generator, images.device)
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    return _take(padded.contiguous(), index, h, w)


# On the CPU, fresh multi-megabyte buffers for every batch cost page faults (about 100 a batch
# of 128 CIFAR images here: the system allocator hands such blocks back between batches), which
# took as long as the work itself; so subtract_mean_crop_flip keeps its padded buffer, whose
# border stays zero, and its index between calls: one pair per thread, for the last batch
# shape seen. What it returns is always a new tensor.
_cpu_workspace = threading.local()


def _buffers(
    n: int, c: int, h: int, w: int, padding: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A zero (N, C, H+2p, W+2p) buffer, whose border no caller writes, and an int64 (N, H, W)
    buffer for the crop index: kept between calls on the CPU; fresh elsewhere (no index
    buffer), where the device's caching allocator keeps freed blocks itself."""
    size = (n, c, h + 2 * padding, w + 2 * padding)
    if device.type != "cpu":
        return torch.zeros(size, dtype=dtype, device=device), None
    # Buffers made in inference mode can't be written outside it: one set for each mode.
    key = (n, c, h, w, padding, dtype, torch.is_inference_mode_enabled())
    kept = getattr(_cpu_workspace, "buffers", None)
    if kept is None or kept[0] != key:
        index = torch.empty((n, h, w), dtype=torch.int64)
        kept = (key, torch.zeros(size, dtype=dtype), index)
        _cpu_workspace.buffers = kept
    return kept[1], kept[2]


def subtract_mean_crop_flip(
    images: torch.Tensor,
    mean: torch.Tensor,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator | None = None,
    scale: float = 255.0,
) -> torch.Tensor:
    """``random_crop_flip(subtract_mean(images, mean, scale), padding, flip, generator)``, bit for
    bit and with the same random draws, in fewer passes over the batch: the mean-subtracted
    images are written into the middle of a zero buffer (the padding is zeros after the mean
    subtraction, as there), cropped by one ``gather`` and divided by ``scale`` in place. The
    result is a new tensor; for data batches (no autograd)."""
    _check(images, padding)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    n, c, h, w = images.shape
    if images.dtype != torch.uint8:  # uint8 converts exactly, in the copy below
        images = images.float()  # as subtract_mean converts it
    dtype = torch.promote_types(torch.float32, mean.dtype)  # that of subtract_mean
    padded, index = _buffers(n, c, h, w, padding, dtype, images.device)
    index = _crop_flip_index(n, h, w, padding, flip, generator, images.device, out=index)
    middle = padded[:, :, padding : padding + h, padding : padding + w]
    middle.copy_(images).sub_(mean)  # (x - mean) as subtract_mean computes it
    # Dividing after the crop gives each pixel the same (x - mean) / scale, and 0 / scale = 0.
    return _take(padded, index, h, w).div_(scale)
