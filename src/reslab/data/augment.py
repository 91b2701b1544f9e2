"""The paper's CIFAR augmentation (section 4.2: "4 pixels are padded on each side, and a 32×32
crop is randomly sampled from the padded image or its horizontal flip"), batched on the batch's
device: each image its own offset and flip, both one ``gather`` from a zero-padded buffer; in
training, drawn from the run's seed, the iteration and the image's place in the global batch alone
(:func:`crop_flip_draws`), so DDP ranks augment a global batch as one process does."""

import threading
from typing import Any

import torch


def subtract_mean(images: torch.Tensor, mean: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """Float ``(images - mean) / scale``; ``mean`` is one C×H×W image on the images' device."""
    return (images.float() - mean) / scale


# On the CPU fresh multi-megabyte buffers every batch cost page faults that took as long as the
# work itself: _cpu_workspace keeps them between calls, one pair per thread, for the last shape.
_cpu_workspace = threading.local()


def subtract_mean_crop_flip(
    images: torch.Tensor, mean: torch.Tensor, padding: int = 4, flip: bool = True,
    draws: torch.Tensor | None = None, scale: float = 255.0,
) -> torch.Tensor:  # fmt: skip
    """``subtract_mean(images, mean, scale)`` (N, C, H, W) zero-padded by ``padding`` pixels,
    then each image's own random crop of the original size, mirrored with probability 1/2
    (``flip``). A new tensor, no autograd; a ``ValueError`` for a batch not (N, C, H, W),
    ``padding`` < 0 or ``scale`` <= 0.

    Image n's draw v = ``draws[n]`` in [0, (2p+1)² · 2) (without ``flip``: (2p+1)²; None: torch's
    ``randint``): mirrored = v % 2, left = (v // 2) % (2p+1), top = (v // 2) // (2p+1)."""
    if images.dim() != 4:
        raise ValueError(f"expected a batch of shape (N, C, H, W), got {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    n, c, h, w = images.shape
    device = images.device
    if images.dtype != torch.uint8:  # uint8 converts exactly, in the copy below
        images = images.float()  # as subtract_mean converts it
    dtype = torch.promote_types(torch.float32, mean.dtype)  # that of subtract_mean
    # a zero (N, C, H+2p, W+2p) buffer (nothing writes its border), an int64 (N, H, W) index
    size = (n, c, h + 2 * padding, w + 2 * padding)
    if device.type != "cpu":  # a fresh one (the caching allocator keeps it)
        padded, index = torch.zeros(size, dtype=dtype, device=device), None
    else:  # made in inference mode, they can't be written outside it: one set for each mode
        key = (n, c, h, w, padding, dtype, torch.is_inference_mode_enabled())
        kept = getattr(_cpu_workspace, "buffers", (None,))
        if kept[0] != key:
            kept = (key, torch.zeros(size, dtype=dtype), torch.empty((n, h, w), dtype=torch.int64))
            _cpu_workspace.buffers = kept
        _, padded, index = kept
    side = 2 * padding + 1
    choices = side * side * (2 if flip else 1)
    if draws is None:
        draws = torch.randint(0, choices, (n,), device=device)
    elif draws.shape != (n,):
        raise ValueError(f"expected {n} draws, one per image; got shape {tuple(draws.shape)}")
    v = draws.view(n, 1)
    cols = torch.arange(w, device=device)
    if flip:
        cols, v = torch.where((v % 2).bool(), cols.flip(0), cols), v // 2
    top, cols = v // side, cols + v % side  # cols: (n, w)
    rows = (top + torch.arange(h, device=device)) * (w + 2 * padding)  # (n, h): row starts
    # each image's crop and flip: an index into its padded image flattened to (H+2p)*(W+2p)
    index = torch.add(rows[:, :, None], cols[:, None, :], out=index).view(n, 1, h * w)
    padded[:, :, padding : padding + h, padding : padding + w].copy_(images).sub_(mean)
    # Dividing after the crop gives each pixel the same (x - mean) / scale, and 0 / scale = 0.
    crops = padded.view(n, c, -1).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)
    return crops.div_(scale)


def crop_flip_draws(
    seed: int, iteration: int, iterations: int, positions: torch.Tensor, padding: int = 4,
    flip: bool = True,
) -> torch.Tensor:  # fmt: skip
    """The draws (``iterations``, len(``positions``)) for :func:`subtract_mean_crop_flip` of
    iterations ``iteration``, ``iteration`` + 1, ... (from 0) and the images at ``positions`` of
    each global batch: a hash of (seed, iteration, position) alone (a 32-bit integer mix, on
    ``positions``' device, no host sync), so N ranks holding positions r, r + N, ... draw what
    one process draws for the whole batch, K batches drawn at once what they draw in turn, and
    a resumed run what the uninterrupted one drew."""
    side = 2 * padding + 1
    steps = torch.arange(iteration, iteration + iterations, device=positions.device)
    return draw_key(seed, steps[:, None], positions[None, :]) % (side * side * (2 if flip else 1))


def draw_key(seed: int, iteration: Any, position: Any) -> Any:
    """The 32-bit key of the image at ``position`` of the global batch of ``iteration`` (from 0)
    of a run seeded with ``seed``: Python ints, or int64 tensors that broadcast. Every training
    draw of an image comes from it (CIFAR's crop and flip, ImageNet's scale, crop, flip and
    colour noise), so that how the batch is split over ranks or steps, or resumed, changes none."""
    return _mix(_mix(_mix(seed) ^ iteration) ^ position)


def _mix(x: Any) -> Any:
    """A 32-bit integer hash, bijective on 0 .. 2**32 - 1, of a Python int or an int64 tensor
    (of its low 32 bits: the products stay below 2**63, no overflow)."""
    x = x & 0xFFFFFFFF
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & 0xFFFFFFFF
    x = ((x ^ (x >> 15)) * 0x5BD1E995) & 0xFFFFFFFF
    return x ^ (x >> 16)
