"""Read images for the command line.

- IDX files (MNIST, optionally gzipped) and ``.npy`` arrays: numpy only.
- Image files (PNG, JPEG, WebP, PGM/PPM, BMP, TIFF, ...: whatever Pillow opens): need the
  optional extra ``pip install 'sjff-client[images]'`` (Pillow); without it they raise an
  :class:`ImageError` that names the extra.

Readers return uint8 arrays; :func:`prepare` turns one image into an MNIST-style
``[H*W]`` uint8 vector (grey, resized with numpy, digit bright on dark); the server scales
UINT8 inputs to [0, 1].
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PILLOW_HINT", "ImageError", "is_idx", "prepare", "read_idx", "read_image", "resize"]

#: How to get the optional image support (quoted in every error that needs it).
PILLOW_HINT = "pip install 'sjff-client[images]'"

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_NPY_MAGIC = b"\x93NUMPY"
_GZIP_MAGIC = b"\x1f\x8b"


class ImageError(ValueError):
    """The file is not an image this module can read (or reading it needs Pillow)."""


def _pillow(what: str) -> Any:
    """The ``PIL`` package, imported only when an image file is read."""
    try:
        import PIL.Image
        import PIL.ImageOps
    except ImportError:
        raise ImageError(f"{what} needs Pillow, which is not installed: {PILLOW_HINT}") from None
    return PIL


def _head(path: Path, n: int) -> bytes:
    """The first ``n`` bytes, decompressed if the file is gzipped."""
    with path.open("rb") as fh:
        head = fh.read(n)
    if head[:2] == _GZIP_MAGIC:
        with gzip.open(path) as fh:
            head = fh.read(n)
    return head


def is_idx(path: str | Path) -> bool:
    """Whether ``path`` is an IDX file (gzipped or not), by its magic number."""
    head = _head(Path(path), 4)
    return len(head) == 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_TYPES


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``t10k-images-idx3-ubyte[.gz]``: ``[N, H, W]``; labels ``idx1``: ``[N]``)."""
    data = Path(path).read_bytes()
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ImageError(f"{path}: not an IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(dims, dtype=np.int64))
    body = data[4 + 4 * ndim :]
    if len(body) < count * dtype.itemsize:
        raise ImageError(f"{path}: truncated IDX file")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(dims).astype(dtype.newbyteorder("="))


def _read_npy(path: Path) -> np.ndarray:
    arr = np.load(path, allow_pickle=False)
    if arr.dtype != np.uint8:  # floats in [0, 1] are scaled, anything else is taken as 0..255
        arr = np.clip(np.round(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    return arr


def _pixels(im: Any) -> np.ndarray:
    """A Pillow image as uint8 ``[H, W]`` (grey), ``[H, W, 2]`` (grey+alpha), ``[H, W, 3]`` or
    ``[H, W, 4]`` (RGB, RGBA)."""
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im, dtype=np.uint8)
    if im.mode.startswith("I;16"):  # 16-bit grey PNG/TIFF: 0..65535 -> 0..255
        return np.round(np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if im.mode in ("I", "F"):  # 32-bit grey: taken as 0..255, floats up to 1 as [0, 1]
        x = np.asarray(im, dtype=np.float64)
        x = x * 255.0 if im.mode == "F" and x.max(initial=0) <= 1.0 else x
        return np.clip(np.round(x), 0, 255).astype(np.uint8)
    if im.mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    has_alpha = im.mode in ("PA", "RGBa", "La") or "transparency" in im.info
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.uint8)


def _read_with_pillow(path: Path) -> np.ndarray:
    pil = _pillow(f"{path}: reading image files")
    try:
        with pil.Image.open(path) as im:
            im.seek(0)  # first frame of an animation or a multi-page file
            # camera JPEGs store the sensor's orientation in EXIF: show the image upright
            return _pixels(pil.ImageOps.exif_transpose(im))
    except pil.UnidentifiedImageError:
        raise ImageError(f"{path}: unknown image format (an image file Pillow opens, .npy, or IDX)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's errors for a damaged file
        raise ImageError(f"{path}: cannot decode the image: {exc}") from None


def read_image(path: str | Path) -> np.ndarray:
    """One image as uint8 ``[H, W]`` or ``[H, W, C]`` (C = 2 grey+alpha, 3 RGB, 4 RGBA).

    ``.npy`` files are read with numpy (float arrays in [0, 1] are scaled to 0..255); any
    other file with Pillow (PNG, JPEG, WebP, PGM/PPM, ...; EXIF orientation applied)."""
    path = Path(path)
    with path.open("rb") as fh:
        if fh.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
            return _read_npy(path)
    return _read_with_pillow(path)


def _axis_weights(n_in: int, n_out: int, box: bool) -> np.ndarray:
    """Resampling weights ``[n_out, n_in]`` along one axis (rows sum to 1).

    Output pixel ``o`` is centred at ``c = (o + 0.5) * n_in / n_out`` in input coordinates;
    input pixel ``i`` gets the filter's value at ``(i + 0.5 - c) / stretch``, where ``stretch``
    (the scale, at least 1) widens the filter over the input when shrinking: that is the
    anti-aliasing. Box: 1 on ``(-0.5, 0.5]``, so each output pixel is the mean of the input
    pixels whose centres it covers. Bilinear: ``1 - |d|``; near the edges the weights are
    renormalised, which holds the edge pixels. These are Pillow's BOX and BILINEAR filters
    (same weights, computed in the same order in float64)."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = (0.5 if box else 1.0) * stretch  # half-width of the filter, in input pixels
    centre = (np.arange(n_out) + 0.5) * scale
    i = np.arange(n_in)[None, :]
    d = (i - centre[:, None] + 0.5) * (1.0 / stretch)
    w = ((d > -0.5) & (d <= 0.5)).astype(np.float64) if box else np.maximum(1.0 - np.abs(d), 0.0)
    # the pixel window decides a pixel centre on the border between two output pixels (where
    # d is +-0.5 up to rounding): the same rounding as Pillow's, so it goes to the same side
    lo, hi = np.floor(centre - support + 0.5), np.floor(centre + support + 0.5)
    w *= (i >= lo[:, None]) & (i < hi[:, None])
    return w / w.sum(axis=1, keepdims=True)


def resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A grey float image ``[H, W]`` resized to ``shape`` ``(rows, cols)``, with numpy (float64).

    Shrinking (in both directions) uses the box filter: each output pixel is the mean of the
    input area it covers (anti-aliased, as MNIST's digits were; exact for integer factors).
    Otherwise bilinear interpolation on pixel centres, edges held (anti-aliased along an axis
    that shrinks). Within float32 rounding of Pillow's ``resize`` with ``BOX`` / ``BILINEAR``
    on an ``F`` image, so image files and arrays need no Pillow to be resized."""
    h, w = img.shape
    th, tw = shape
    if (h, w) == (th, tw):
        return img
    box = h >= th and w >= tw
    return _axis_weights(h, th, box) @ np.asarray(img, dtype=np.float64) @ _axis_weights(w, tw, box).T


def prepare(img: np.ndarray, shape: tuple[int, int] = (28, 28), invert: str = "auto") -> np.ndarray:
    """One image -> uint8 ``[H*W]`` like MNIST: grey, resized to ``shape``, bright digit on a
    dark background (``invert``: "auto" inverts mostly-bright images, "yes", "no")."""
    x = np.asarray(img, dtype=np.float64)
    if x.ndim == 3:
        if x.shape[-1] in (2, 4):  # alpha: composite on white (a transparent PNG's paper)
            alpha = x[..., -1:] / 255.0
            x = x[..., :-1] * alpha + 255.0 * (1 - alpha)
        # ITU-R 601 luma, in float: no rounding before the resize
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114]) if x.shape[-1] >= 3 else x[..., 0]
    if x.ndim != 2:
        raise ImageError(f"expected one image, got an array of shape {list(np.shape(img))}")
    x = resize(x, shape)
    if invert == "yes" or (invert == "auto" and x.mean() > 127.5):
        x = 255.0 - x
    return np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1)
