"""Image reading of the Python client: IDX and .npy with numpy, image files with Pillow (the
optional ``sjff-client[images]`` extra), the clear error when Pillow is missing, and the numpy
resize (checked against Pillow's).

Every image file here is written by Pillow with known content and decoded back."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sjff_client.images import PILLOW_HINT, ImageError, is_idx, prepare, read_idx, read_image, resize

# 4 x 4 flat blocks of 8 x 8 pixels (aligned to JPEG's 8 x 8 DCT blocks): 0, 17, ..., 255
BLOCKS = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4) * 17, np.ones((8, 8), np.uint8))


def _rng_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize(
    ("mode", "shape"), [("L", (17, 13)), ("LA", (9, 11, 2)), ("RGB", (9, 11, 3)), ("RGBA", (9, 11, 4))]
)
def test_png_pixels(tmp_path, mode, shape):
    img = _rng_image(shape)
    Image.fromarray(img, mode=mode).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), img)


def test_png_palette_and_16_bit(tmp_path):
    # palette image: indices 0..3 into red, green, blue, white
    index = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], np.uint8)
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]
    im = Image.fromarray(index, mode="L").convert("P")
    im.putpalette(palette)
    im.putdata(index.ravel().tolist())
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.array(palette, np.uint8).reshape(4, 3)[index])
    # 16-bit grey: 0, 257, ..., 65535 are exactly 0, 1, ..., 255
    grey16 = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png"), np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_jpeg_pixels(tmp_path):
    """Flat 8 x 8 blocks survive JPEG exactly in grey and within 1 level in colour (4:4:4)."""
    Image.fromarray(BLOCKS).save(tmp_path / "g.jpg", quality=95)
    np.testing.assert_array_equal(read_image(tmp_path / "g.jpg"), BLOCKS)
    rgb = np.stack([BLOCKS, 255 - BLOCKS, np.roll(BLOCKS, 8, axis=1)], -1)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95, subsampling=0)
    got = read_image(tmp_path / "c.jpg").astype(int)
    assert got.shape == (32, 32, 3) and np.abs(got - rgb).max() <= 1


def test_jpeg_exif_orientation(tmp_path):
    """A camera JPEG stored sideways with EXIF orientation 6 (rotate 90 clockwise) reads upright."""
    upright = np.zeros((16, 32), np.uint8)
    upright[:8, :8] = 255  # a white block in the top-left corner
    stored = np.rot90(upright, 1)  # what the sensor wrote: [32, 16], block at the bottom-left
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "r.jpg", quality=95, exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "r.jpg"), upright)


def test_webp_and_netpbm(tmp_path):
    rgb = _rng_image((9, 11, 3), 1)
    Image.fromarray(rgb).save(tmp_path / "x.webp", lossless=True)
    np.testing.assert_array_equal(read_image(tmp_path / "x.webp"), rgb)
    (tmp_path / "d.pgm").write_bytes(b"P5\n# a comment\n32 32\n255\n" + BLOCKS.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "d.pgm"), BLOCKS)
    (tmp_path / "a.pgm").write_text("P2\n2 2\n15\n0 15\n15 0\n")  # maxval 15 scales to 255
    np.testing.assert_array_equal(read_image(tmp_path / "a.pgm"), [[0, 255], [255, 0]])


def test_unreadable_files(tmp_path):
    (tmp_path / "x.txt").write_text("not an image")
    with pytest.raises(ImageError, match="unknown image format"):
        read_image(tmp_path / "x.txt")
    Image.fromarray(BLOCKS).save(tmp_path / "t.png")
    (tmp_path / "t.png").write_bytes((tmp_path / "t.png").read_bytes()[:60])  # cut inside the data
    with pytest.raises(ImageError, match="cannot decode"):
        read_image(tmp_path / "t.png")


def test_idx_and_npy(tmp_path, mnist_samples):
    images, labels = mnist_samples
    img = tmp_path / "images-idx3-ubyte.gz"
    img.write_bytes(gzip.compress(struct.pack(">BBBBIII", 0, 0, 8, 3, len(images), 28, 28) + images.tobytes()))
    lab = tmp_path / "labels-idx1-ubyte"
    lab.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, len(labels)) + labels.astype(np.uint8).tobytes())
    assert is_idx(img) and is_idx(lab)
    np.testing.assert_array_equal(read_idx(img).reshape(len(images), -1), images)
    np.testing.assert_array_equal(read_idx(lab), labels)
    digit = images[0].reshape(28, 28)
    np.save(tmp_path / "d.npy", digit)
    np.testing.assert_array_equal(read_image(tmp_path / "d.npy"), digit)
    assert not is_idx(tmp_path / "d.npy")
    np.save(tmp_path / "f.npy", digit / 255.0)  # floats in [0, 1]
    np.testing.assert_array_equal(read_image(tmp_path / "f.npy"), digit)


def test_prepare_a_photo_of_a_digit(tmp_path, mnist_samples):
    """A 4x larger dark-on-light RGB picture of an MNIST digit becomes that digit again: exactly
    from PNG (the box filter averages each 4 x 4 block), closely from JPEG."""
    digit = mnist_samples[0][0].reshape(28, 28)
    big = np.kron(255 - digit, np.ones((4, 4), np.uint8))
    Image.fromarray(np.stack([big] * 3, -1)).save(tmp_path / "d.png")
    np.testing.assert_array_equal(prepare(read_image(tmp_path / "d.png")), digit.reshape(-1))
    Image.fromarray(np.stack([big] * 3, -1)).save(tmp_path / "d.jpg", quality=90)
    err = np.abs(prepare(read_image(tmp_path / "d.jpg")).astype(int) - digit.reshape(-1))
    assert err.mean() < 0.5 and err.max() <= 4  # measured: 0.07 and 1 (libjpeg-turbo)
    # alpha: a transparent background is white paper, so the same digit comes out
    rgba = np.stack([np.zeros_like(big)] * 3 + [digit.repeat(4, 0).repeat(4, 1)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(prepare(read_image(tmp_path / "a.png")), digit.reshape(-1))


def test_prepare_enlarges_bilinearly():
    """Enlarging is bilinear on pixel centres with the edges held, like the client's former
    numpy resizer: a ramp 0, 10, ..., 130 over 14 columns, at 28 columns."""
    ramp = np.tile(np.arange(14) * 10.0, (14, 1))
    out = prepare(ramp, (28, 28), invert="no").reshape(28, 28).astype(float)
    x = np.clip((np.arange(28) + 0.5) / 2 - 0.5, 0, 13) * 10
    np.testing.assert_array_equal(out, np.tile(np.round(x), (28, 1)))


# (rows, cols) -> (rows, cols): integer and fractional shrinking (30 -> 28 puts pixel centres
# exactly on the border of two output pixels), enlarging, one axis each way, one axis unchanged
RESIZES = [
    ((84, 84), (28, 28)),
    ((100, 75), (28, 28)),
    ((30, 30), (28, 28)),
    ((1000, 30), (28, 28)),
    ((28, 640), (28, 28)),
    ((14, 14), (28, 28)),
    ((3, 20), (28, 28)),
    ((40, 20), (28, 28)),
    ((28, 29), (16, 12)),
]


@pytest.mark.parametrize(("size", "shape"), RESIZES)
def test_resize_is_pillows_box_and_bilinear(size, shape):
    """The numpy resize gives Pillow's BOX (shrinking) and BILINEAR (otherwise) results on float
    pixels, within float32 rounding: at most 1 grey level apart once rounded to uint8."""
    x = np.random.default_rng(size[0] * size[1]).uniform(0, 255, size).astype(np.float32)
    box = size[0] >= shape[0] and size[1] >= shape[1]
    method = Image.Resampling.BOX if box else Image.Resampling.BILINEAR
    ref = np.asarray(Image.fromarray(x, mode="F").resize(shape[::-1], method), dtype=np.float64)
    got = resize(x.astype(np.float64), shape)
    assert got.shape == shape and np.abs(got - ref).max() < 1e-3
    assert np.abs(np.round(got) - np.round(ref)).max() <= 1


def test_resize_exact_cases():
    """Integer shrinking is the block mean; the same size is left alone."""
    x = np.random.default_rng(3).uniform(0, 255, (56, 84))
    np.testing.assert_allclose(resize(x, (28, 28)), x.reshape(28, 2, 28, 3).mean(axis=(1, 3)), rtol=0, atol=1e-12)
    assert resize(x, (56, 84)) is x


def test_png_and_npy_of_the_same_pixels_prepare_alike(tmp_path):
    """A photo-sized RGB picture (fractional shrink) gives the same vector from PNG and .npy."""
    rgb = _rng_image((75, 61, 3), 2)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.save(tmp_path / "x.npy", rgb)
    png, npy = prepare(read_image(tmp_path / "x.png")), prepare(read_image(tmp_path / "x.npy"))
    assert png.shape == (784,) and np.abs(png.astype(int) - npy).max() <= 1


def test_without_pillow(tmp_path, mnist_samples):
    """No Pillow: IDX and .npy still read and resize; image files fail naming the extra."""
    digit = mnist_samples[0][0].reshape(28, 28)
    Image.fromarray(digit).save(tmp_path / "d.png")
    np.save(tmp_path / "d.npy", digit)
    np.save(tmp_path / "big.npy", np.kron(digit, np.ones((2, 2), np.uint8)))
    code = f"""
import sys
sys.modules["PIL"] = None
import numpy as np
from sjff_client.images import ImageError, prepare, read_image
digit = np.load({str(tmp_path / "d.npy")!r}).reshape(-1)
for path in ({str(tmp_path / "d.npy")!r}, {str(tmp_path / "big.npy")!r}):  # 28 x 28 and 56 x 56
    assert (prepare(read_image(path), invert="no") == digit).all()
try:
    read_image({str(tmp_path / "d.png")!r})
except ImageError as exc:
    print(exc)
from sjff_client.cli import main
sys.exit(main(["--target", "localhost:1", "infer", {str(tmp_path / "d.png")!r}]))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = p.stdout.splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stdout + p.stderr
    assert "reading image files needs Pillow" in lines[0]
    assert all(PILLOW_HINT in line for line in [*lines, p.stderr])
