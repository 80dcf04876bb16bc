"""Computing a group of updates (the learner's compute thread): nothing is written here.

A group is applied in order on a private copy of the published weights. An update that
raises or leaves any weight or eligibility value non-finite is refused, and the copy is
rebuilt from the published weights plus the group's accepted updates (replay is
deterministic), so the refused update leaves no trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from spikingjelly_ff.runtime.protocol import RuntimeModel

from ..errors import InvalidInput, PreconditionFailed, RequestError, VersionConflict
from ..inference.engine import Published
from ..storage.records import DIGEST, UPDATE, Update, UpdateRecord
from ..storage.snapshots import state_digest

__all__ = ["Result", "Staged", "compute_group", "finite", "rebuild"]

#: per update: (new version, log-odds before it ``[n]``) or the refusal
Result = tuple[int, np.ndarray] | RequestError


@dataclass(slots=True)
class Staged:
    """A computed group: its new weights (not yet durable; None if nothing was accepted),
    the log records of its accepted updates (and digest), and one :data:`Result` per update."""

    published: Published | None
    records: list[UpdateRecord]
    results: list[Result]
    sync_s: float = 0.0
    durable: bool = False  # its records are synced: from then on it is applied, whatever follows


def finite(model: RuntimeModel) -> bool:
    """Whether every weight and eligibility value is finite."""
    return all(np.isfinite(a).all() for a in (*model.weights, *model.eligibility))


def rebuild(base: Published, records: Sequence[UpdateRecord]) -> RuntimeModel:
    """The published weights plus the updates of ``records`` (deterministic replay)."""
    work = base.model.copy()
    for r in records:
        if r.update is not None:
            r.update.apply(work)
    return work


def compute_group(
    base: Published,
    updates: Sequence[Update],
    *,
    default_eta: float,
    digest_every: int,
    publish: Callable[[int, RuntimeModel], Published],
) -> Staged:
    """Apply ``updates`` in order on a copy of ``base``. An update without a seed uses its
    new version number, one without eta ``default_eta``; every ``digest_every`` versions a
    digest record follows the group's updates."""
    work = base.model.copy()
    version = base.version
    records: list[UpdateRecord] = []
    results: list[Result] = []
    now = time.time()
    for u in updates:
        if u.expected_version is not None and u.expected_version != version:
            results.append(VersionConflict(f"expected version {u.expected_version}, the model is at {version}"))
            continue
        used = replace(
            u,
            seed=int(u.seed) if u.seed is not None else version + 1,
            eta=float(u.eta) if u.eta is not None else default_eta,
            expected_version=None,
        )
        error: RequestError | None = None
        try:
            log_odds = np.asarray(used.apply(work), dtype=np.float32)
            if not finite(work):
                error = PreconditionFailed(
                    f"update refused: it would make the weights non-finite (eta={used.eta:g}); "
                    f"the model stays at version {version}"
                )
        except ValueError as exc:
            error = InvalidInput(str(exc))
        except FloatingPointError as exc:
            error = PreconditionFailed(f"update refused: {exc}")
        if error is not None:
            results.append(error)
            work = rebuild(base, records)
            continue
        version += 1
        # with a request id the answer is logged too: a retry after a restart gets it again
        answer = log_odds if used.request_id else None
        records.append(UpdateRecord(UPDATE, version, now, used, log_odds=answer))
        results.append((version, log_odds))
    if not records:
        return Staged(None, records, results)
    if digest_every and version // digest_every > base.version // digest_every:
        records.append(UpdateRecord(DIGEST, version, now, digest=state_digest(work.weights, work.eligibility)))
    return Staged(publish(version, work), records, results)
