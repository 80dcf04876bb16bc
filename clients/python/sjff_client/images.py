"""Read images for the command line with numpy only: IDX files (MNIST, optionally gzipped),
PNG (8-bit grey, grey+alpha, RGB, RGBA, palette; not interlaced), PGM/PPM (netpbm) and .npy.

Everything returns uint8 arrays; :func:`prepare` turns one image into an MNIST-style
``[in_features]`` vector (grey, resized, digit bright on dark).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["ImageError", "prepare", "read_idx", "read_image", "read_netpbm", "read_png", "resize"]


class ImageError(ValueError):
    """The file is not an image this module can read."""


def _open_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``t10k-images-idx3-ubyte[.gz]``, labels ``idx1``) as an array."""
    data = _open_bytes(Path(path))
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


def read_netpbm(path: str | Path) -> np.ndarray:
    """PGM/PPM (P2, P3, P5, P6) as uint8 ``[H, W]`` or ``[H, W, 3]``."""
    data = Path(path).read_bytes()
    magic = data[:2]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise ImageError(f"{path}: not a PGM/PPM file")
    tokens: list[bytes] = []
    pos = 2
    while len(tokens) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        tokens.append(data[start:pos])
    w, h, maxval = (int(t) for t in tokens)
    channels = 3 if magic in (b"P3", b"P6") else 1
    if magic in (b"P5", b"P6"):
        dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
        arr = np.frombuffer(data[pos + 1 :], dtype=dtype, count=w * h * channels)
    else:
        arr = np.array(data[pos:].split()[: w * h * channels], dtype=np.int64)
    arr = arr.astype(np.float64) * (255.0 / maxval)
    shape = (h, w, 3) if channels == 3 else (h, w)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8).reshape(shape)


def _unfilter(raw: bytes, h: int, stride: int, bpp: int) -> np.ndarray:
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    pos = 0
    for y in range(h):
        ftype = raw[pos]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += stride + 1
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        else:
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                a = cur[x - bpp] if x >= bpp else 0
                b = prev[x]
                c = prev[x - bpp] if x >= bpp else 0
                if ftype == 1:
                    pred = a
                elif ftype == 3:
                    pred = (a + b) // 2
                elif ftype == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                else:
                    raise ImageError(f"bad PNG filter type {ftype}")
                cur[x] = (line[x] + pred) & 0xFF
        out[y] = cur
        prev = cur
    return out


def read_png(path: str | Path) -> np.ndarray:
    """An 8-bit PNG as uint8 ``[H, W]`` (grey) or ``[H, W, C]``."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ImageError(f"{path}: not a PNG file")
    pos = 8
    idat = []
    palette = None
    w = h = depth = ctype = interlace = None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if w is None or depth != 8 or interlace:
        raise ImageError(f"{path}: only 8-bit, non-interlaced PNGs are supported")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype)
    if channels is None:
        raise ImageError(f"{path}: unknown PNG colour type {ctype}")
    rows = _unfilter(zlib.decompress(b"".join(idat)), h, w * channels, channels)
    img = rows.reshape(h, w, channels)
    if ctype == 3:
        if palette is None:
            raise ImageError(f"{path}: palette image without PLTE")
        img = palette[img[..., 0]]
    return img[..., 0] if img.shape[-1] == 1 else img


def read_image(path: str | Path) -> np.ndarray:
    """Any supported single image file as uint8 ``[H, W]`` or ``[H, W, C]``."""
    path = Path(path)
    head = path.read_bytes()[:8]
    if head.startswith(b"\x89PNG"):
        return read_png(path)
    if head[:1] == b"P" and head[1:2] in b"2356":
        return read_netpbm(path)
    if head.startswith(b"\x93NUMPY"):
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != np.uint8:
            arr = np.clip(np.round(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return arr
    raise ImageError(f"{path}: unknown image format (PNG, PGM/PPM, .npy or IDX with --index)")


def resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a grey float image ``[H, W]`` to ``shape``."""
    h, w = img.shape
    th, tw = shape
    if (h, w) == (th, tw):
        return img
    ys = np.clip((np.arange(th) + 0.5) * h / th - 0.5, 0, h - 1)
    xs = np.clip((np.arange(tw) + 0.5) * w / tw - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def prepare(img: np.ndarray, shape: tuple[int, int] = (28, 28), invert: str = "auto") -> np.ndarray:
    """One image -> uint8 ``[H*W]`` like MNIST: grey, resized to ``shape``, bright digit on a
    dark background (``invert``: "auto" inverts mostly-bright images, "yes", "no")."""
    x = np.asarray(img, dtype=np.float64)
    if x.ndim == 3:
        if x.shape[-1] in (2, 4):  # alpha: composite on white
            alpha = x[..., -1:] / 255.0
            x = x[..., :-1] * alpha + 255.0 * (1 - alpha)
        x = x[..., :3] @ np.array([0.299, 0.587, 0.114])[: x.shape[-1]] if x.shape[-1] >= 3 else x[..., 0]
    if x.ndim != 2:
        raise ImageError(f"expected one image, got an array of shape {list(np.shape(img))}")
    x = resize(x, shape)
    if invert == "yes" or (invert == "auto" and x.mean() > 127.5):
        x = 255.0 - x
    return np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1)
