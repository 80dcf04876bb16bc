"""The state a training run goes on from: written after every epoch (and every
``train.checkpoint_batches`` batches) to ``OUT/resume.pt``, so that a run stopped part-way
(killed, a machine taken back, a session's end) continues from there with ``sjff train CONFIG
--out OUT --resume`` to the weights and metrics the uninterrupted run would have reached.

The file holds the run's config, the finished epochs, the metrics so far, the network's
tensors, the learner's (step count, optimizer moments, eligibility traces, carried membranes)
and every random stream of the run (the batch order and image shifts, the negative labels,
the learner's spike draws, the test scorers') and, within an epoch, its sample order, the next
batch and the batches drawn ahead. It is written to a temporary file, synced and
renamed over the last one, so a crash while writing leaves the previous epoch's state; it is
removed once the run has written its model.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spikingjelly_ff.runs.checkpoint import CheckpointError
from spikingjelly_ff.runs.config import flatten
from spikingjelly_ff.runtime.files import write_atomic

__all__ = [
    "FORMAT",
    "NAME",
    "TMP_NAME",
    "RunParts",
    "check_resumable",
    "generator_of",
    "load_state",
    "nothing_to_resume",
    "save_state",
    "state_to_resume",
]

NAME = "resume.pt"
TMP_NAME = f".{NAME}.tmp"  # a write cut short leaves this, never a torn resume.pt
FORMAT = 1
_MAGIC = b"sjff-resume sha256 "  # the header line: this, the payload's hex digest, a newline
# config keys that may differ between the stopped run and its continuation: where it writes its
# state, not what it computes (threads may change float sums, so they must stay)
_FREE_KEYS = {"train.checkpoint_batches"}


def save_state(out_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``out_dir/resume.pt`` atomically (temporary file, fsync, rename),
    after a header line with the SHA-256 of the rest (torch's zip reader checks no CRC, so
    flipped bytes in a tensor would load)."""
    out = Path(out_dir)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    payload = buf.getvalue()
    head = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(payload)

    return write_atomic(out / NAME, write, out / TMP_NAME)


def load_state(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The state in ``out_dir/resume.pt``, or ``None`` where there is none."""
    path = Path(out_dir) / NAME
    if not path.is_file():
        return None
    data = path.read_bytes()
    if data.startswith(_MAGIC):
        head, _, payload = data.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != head[len(_MAGIC) :]:
            raise CheckpointError(
                f"{path}: the run's state is damaged (its checksum does not match); delete it to start the run afresh"
            )
    else:  # written before the checksum: torch's zip alone
        payload = data
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(
            f"{path}: cannot read the run's state ({exc}); delete it to start the run afresh"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a resume state of format {FORMAT}; delete it to start the run afresh")
    return state


def check_resumable(state: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse to continue a run under another config than the one it started with
    (``train.checkpoint_batches`` aside), or on another kind of device or backend than the one
    it resolved (``device: auto``): the continuation would be neither run. ``config`` is the
    run's ``to_dict()`` with the resolved ``run.device`` and ``run.backend``."""
    saved, now = flatten({**state["config"], "run": state.get("run")}), flatten(config)
    diff = sorted(k for k in saved.keys() | now.keys() if k not in _FREE_KEYS and saved.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise CheckpointError(
            f"{path} was written by a run with other settings ({shown}{more}): resume it with the same config and "
            "--set options, or delete it to start afresh"
        )


def generator_of(fn: Any) -> torch.Generator | None:
    """The random stream of a scorer's bound method (``SpikingScorer(...).predict``), if any;
    analog scorers draw nothing."""
    return getattr(getattr(fn, "__self__", None), "generator", None)


def state_to_resume(
    out_dir: str | os.PathLike, config: dict[str, Any], resume: bool | None, log: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """The state a run of ``config`` (``RunConfig.to_dict()`` and the resolved ``run.device``
    and ``run.backend``) in ``out_dir`` goes on from, or ``None`` to start afresh. ``resume``:
    True requires one written with the same settings; False refuses to start over one (it
    would throw its epochs away); None (``sjff reproduce``) takes one written with the same
    settings and otherwise starts afresh. The state of a run that wrote its model but stopped
    before removing it is removed."""
    out = Path(out_dir)
    path = out / NAME
    try:
        state = load_state(out)
    except CheckpointError as exc:
        if resume is not None:
            raise
        log(f"{exc}: starting afresh")
        state = None
    if state is not None and _finished(state, out):
        path.unlink()
        state = None
    if state is None:
        if resume:
            nothing_to_resume(out)
        return None
    if resume is False:
        at = state.get("position")
        within = "" if at is None else f", and {at['batch']} batches of epoch {at['epoch']}"
        raise CheckpointError(
            f"{out} holds a stopped run (epoch {state['epoch']} of {state['config']['train']['epochs']} done{within}): "
            f"continue it with --resume, or delete {path} to start afresh"
        )
    try:
        check_resumable(state, config, path)
    except CheckpointError:
        if resume:
            raise
        log(f"{path} was written with other settings: starting afresh")
        return None
    return state


class RunParts:
    """The parts of a training run that ``resume.pt`` holds the state of: the network's
    tensors, the ``learner``'s (``state_dict()`` / ``load_state_dict()``), the named random
    ``streams``, the data-parallel ``loop`` (``ShardedLoop``; None on one process) and the
    ``batches`` (the epoch's sample order)."""

    def __init__(self, net: torch.nn.Module, learner: Any, streams: dict[str, torch.Generator], loop, batches) -> None:
        self.net, self.learner, self.streams, self.loop, self.batches = net, learner, streams, loop, batches

    def state(self, config: dict, done: int, position: dict | None, metrics: dict) -> dict[str, Any]:
        """The state after ``done`` epochs, and within the next at ``position`` (where its
        loop stopped; the sample order is added here). Collective on several ranks: the
        carried membranes are gathered into the whole batch's."""
        learner = self.learner.state_dict()
        if self.loop is not None:
            learner = self.loop.global_state(learner)
        if position is not None:
            position = {**position, "order": self.batches.order}
        return {
            "config": config,
            "epoch": done,
            "position": position,
            "metrics": metrics,
            "net": self.net.state_dict(),
            "learner": learner,
            "last_batch": None if self.loop is None else self.loop.last_batch,
            "streams": {k: g.get_state() for k, g in self.streams.items()},
        }

    def restore(self, state: dict[str, Any], device: torch.device | str) -> dict | None:
        """Load ``state`` into the parts; returns the position within the next epoch (its
        drawn-ahead tensors on ``device``), or None where the run stopped at an epoch's end."""
        self.net.load_state_dict(state["net"])
        learner = state["learner"]
        if self.loop is not None:
            self.loop.last_batch = state["last_batch"]  # before local_state, which slices by it
            learner = self.loop.local_state(learner)
        self.learner.load_state_dict(learner)
        for name, g in self.streams.items():
            g.set_state(state["streams"][name])
        position = state.get("position")
        if position is None:
            return None
        self.batches.resume_at = (position["order"], position["source"])
        buffer = [tuple(t.to(device) for t in batch) for batch in position.get("buffer", [])]
        return {**position, "buffer": buffer, "pending": [p.to(device) for p in position.get("pending", [])]}


def _finished(state: dict[str, Any], out: Path) -> bool:
    """The state is of the run's last epoch, and the model it went on to write is there."""
    last = state["position"] is None and state["epoch"] == state["config"]["train"]["epochs"]
    return last and (out / "model" / "config.json").is_file()


def nothing_to_resume(out: Path) -> None:
    """Raise the error of ``--resume`` where ``out`` holds no state to go on from."""
    done = (out / "model" / "config.json").is_file()
    why = "the run there has finished (model/ is written)" if done else f"there is no {NAME}"
    raise CheckpointError(f"{out}: nothing to resume: {why}")
