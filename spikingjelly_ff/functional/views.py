"""Test-time views: an image and its copies moved by whole pixels, for torch tensors and numpy
arrays alike (the torch scorers and the torch-free runtime make the same views).

Images are flattened rows ``[N, H*W]``; moved pixels leave zeros behind.
"""

from __future__ import annotations

from spikingjelly_ff.functional import _array

__all__ = ["check_views", "translate", "view_offsets"]


def check_views(shift: int, shape: tuple[int, int] | None = None) -> None:
    """ValueError unless ``shift`` (views moved 1..shift pixels) is an integer >= 0 and, given
    the image ``shape``, below min(H, W): a larger move leaves nothing of the image."""
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift_views must be an integer >= 0, got {shift!r}")
    if shape is not None and shift and shift >= min(shape):
        raise ValueError(f"shift_views {shift} must be below the image's smaller side ({min(shape)} of {tuple(shape)})")


def view_offsets(shift: int) -> list[tuple[int, int]]:
    """(dy, dx) of the test-time views: the image itself, then 1..``shift`` pixels down, up,
    right and left (``4 * shift + 1`` views)."""
    out = [(0, 0)]
    for s in range(1, shift + 1):
        out += [(s, 0), (-s, 0), (0, s), (0, -s)]
    return out


def translate(x, shape: tuple[int, int], dy: int, dx: int):
    """Every image ``[N, H*W]`` moved ``dy`` pixels down and ``dx`` right (negative: up/left),
    zeros where nothing moved in; a new array (``x`` itself for no move)."""
    if dy == 0 and dx == 0:
        return x
    h, w = shape
    if abs(dy) >= h or abs(dx) >= w:  # moved out of the frame
        return _array.xp(x).zeros_like(x)
    img = x.reshape(-1, h, w)
    out = _array.xp(x).zeros_like(img)
    # out[y, x] = img[y - dy, x - dx] wherever that pixel exists
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out.reshape(x.shape)
