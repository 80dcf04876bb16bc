"""Per-sample random draws (``train.draws: per-sample``): every random number a training
sample needs comes from its own generator, keyed by (seed, purpose, epoch, global sample
index), so a sample draws the same numbers whichever rank, batch position or process count
handles it. That is what makes N data-parallel processes train the model one process trains.

The key is mixed by splitmix64 into the seed of a torch CPU generator (Mersenne Twister,
one per sample and purpose: ~2 us to seed); draws are made on the CPU and moved to the
data's device. The default ``stream`` draws (one generator for the run) are in ``samples.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spikingjelly_ff.nn.augment import shift_images_by

__all__ = ["PURPOSES", "generator", "key", "make_samples", "row_spikes", "shift_images"]

#: One independent stream per use of randomness, so adding a draw to one leaves the others.
PURPOSES = {"sample": 1, "shift": 2, "spikes": 3, "eval": 4}

_MASK = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def key(seed: int, purpose: str, epoch: int, index: int) -> int:
    """A 63-bit seed for (run seed, purpose, epoch, sample index); distinct inputs give
    unrelated seeds (each field passes through splitmix64 in turn)."""
    z = 0
    for part in (seed, PURPOSES[purpose], epoch, index):
        z = _splitmix64(z ^ (part & _MASK))
    return z >> 1  # torch seeds are signed 64-bit


def _stack(draws: list[Tensor], shape: tuple[int, ...], dtype: torch.dtype, dim: int = 0) -> Tensor:
    """``torch.stack(draws, dim)``; a rank's shard may hold no rows (the last batch of an
    epoch can be smaller than the process count), then an empty tensor of ``shape``."""
    return torch.stack(draws, dim) if draws else torch.empty(shape, dtype=dtype)


def generator(seed: int, purpose: str, epoch: int, index: int) -> torch.Generator:
    """A CPU generator of its own for one sample and purpose."""
    return torch.Generator().manual_seed(key(seed, purpose, epoch, index))


def shift_images(x: Tensor, shape: tuple[int, int], max_shift: int, index: Tensor, seed: int, epoch: int) -> Tensor:
    """Random translation of images ``[N, H*W]`` (as ``augment.shift_images``), the offset of
    each drawn from its global sample ``index`` ``[N]``."""
    if max_shift <= 0:
        return x
    offsets = _stack(
        [torch.randint(0, 2 * max_shift + 1, (2,), generator=generator(seed, "shift", epoch, int(i))) for i in index],
        (0, 2),
        torch.int64,
    )  # [N, 2]: dy, dx
    return shift_images_by(x, shape, max_shift, offsets[:, :1], offsets[:, 1:])


def make_samples(
    labels: Tensor, index: Tensor, mode: str, num_classes: int, seed: int, epoch: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``train.make_samples`` with per-sample draws (``mixed`` or ``paired`` negatives, or
    ``none``: every row once with its true class, target 1, nothing drawn).

    Returns ``(rows, shown, y, row_keys)``; ``row_keys`` ``[R]`` = 2 * global index + (1 for
    the negative row of a paired sample), which keys that row's input spikes."""
    if mode == "none":
        n = labels.shape[0]
        keys = index.to(torch.int64).cpu() * 2
        return torch.arange(n, device=labels.device), labels, torch.ones(n, device=labels.device), keys
    draws = [generator(seed, "sample", epoch, int(i)) for i in index]
    offset = _stack([torch.randint(1, num_classes, (1,), generator=g) for g in draws], (0, 1), torch.int64).squeeze(1)
    wrong = (labels + offset.to(labels.device)) % num_classes
    n = labels.shape[0]
    rows = torch.arange(n, device=labels.device)
    keys = index.to(torch.int64).cpu() * 2
    if mode == "mixed":
        u = _stack([torch.rand(1, generator=g) for g in draws], (0, 1), torch.float32).squeeze(1)
        y = u.lt(0.5).float().to(labels.device)
        return rows, torch.where(y.bool(), labels, wrong), y, keys
    if mode != "paired":
        raise ValueError(f"per-sample draws support negatives 'mixed', 'paired' and 'none'; got {mode!r}")
    ones = torch.ones(n, device=labels.device)
    y = torch.cat((ones, torch.zeros_like(ones)))
    return torch.cat((rows, rows)), torch.cat((labels, wrong)), y, torch.cat((keys, keys + 1))


def row_spikes(rates: Tensor, steps: int, row_keys: Tensor, seed: int, epoch: int) -> Tensor:
    """Bernoulli input spikes ``[steps, R, D]`` for rates ``[R, D]``, row r drawn from
    ``row_keys[r]`` (one ``[steps, D]`` uniform draw per row)."""
    u = _stack(
        [torch.rand(steps, rates.shape[1], generator=generator(seed, "spikes", epoch, int(k))) for k in row_keys],
        (steps, 0, rates.shape[1]),
        torch.float32,
        dim=1,
    )
    return (u.to(rates.device) < rates).to(rates.dtype)
