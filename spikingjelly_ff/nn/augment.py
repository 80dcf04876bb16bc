"""Image translations: random shifts for training (test-time views: ``functional.views``).

Images are flattened rows ``[N, H*W]``; moved pixels leave zeros behind.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["shift_images", "shift_images_by"]


def shift_images(x: Tensor, shape: tuple[int, int], max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image ``[N, H*W]`` by a random whole-pixel offset in
    [-max_shift, max_shift]^2, filling with zeros (data augmentation)."""
    if max_shift <= 0:
        return x
    n = x.shape[0]
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1), generator=generator)
    return shift_images_by(x, shape, max_shift, dy, dx)


def shift_images_by(x: Tensor, shape: tuple[int, int], max_shift: int, dy: Tensor, dx: Tensor) -> Tensor:
    """Translate each image ``[N, H*W]`` by ``(dy, dx) - max_shift`` pixels (``dy``, ``dx``
    ``[N, 1]`` int64 in [0, 2 max_shift]), filling with zeros."""
    n = x.shape[0]
    h, w = shape
    pad = torch.nn.functional.pad(x.reshape(n, h, w), (max_shift,) * 4)
    rows = (torch.arange(h).unsqueeze(0) + dy).to(x.device)  # [N, H]
    cols = (torch.arange(w).unsqueeze(0) + dx).to(x.device)  # [N, W]
    out = pad.gather(1, rows.unsqueeze(2).expand(n, h, w + 2 * max_shift))
    return out.gather(2, cols.unsqueeze(1).expand(n, h, w)).reshape(n, h * w)
