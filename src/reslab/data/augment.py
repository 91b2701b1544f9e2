"""The paper's CIFAR augmentation as a few batched tensor ops on whatever device holds the batch.

Section 4.2: "4 pixels are padded on each side, and a 32×32 crop is randomly sampled from the
padded image or its horizontal flip." Each image gets its own crop offset and its own flip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def subtract_mean(images: torch.Tensor, mean: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
    """Float images with the per-pixel mean (a C×H×W image on the images' device) subtracted,
    divided by ``scale``. The caller keeps ``mean`` on the device once, not per batch."""
    return (images.float() - mean) / scale


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
    if images.dim() != 4:
        raise ValueError(f"expected a batch of shape (N, C, H, W), got {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    top = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    rows = top + torch.arange(h, device=device)  # (n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if flip:
        mirrored = torch.rand((n, 1), device=device, generator=generator) < 0.5
        cols = torch.where(mirrored, cols.flip(1), cols)
    cols = cols + left  # (n, w)
    # One gather: pick rows, then columns, of each image's own window.
    out = padded.gather(2, rows[:, None, :, None].expand(n, padded.shape[1], h, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(n, padded.shape[1], h, w))
