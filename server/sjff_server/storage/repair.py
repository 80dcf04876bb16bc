"""``sjff state repair``: check a model's learning state and, when told to, cut its damage.

    sjff state repair STATE_DIR --model M [--version V]             # report, change nothing
    sjff state repair STATE_DIR --model M [--version V] --truncate  # cut what the report names

The server never cuts anything but a torn final write. Damage elsewhere keeps the model
from loading until an operator runs this with ``--truncate``, which takes the least
destructive cut that leaves a consistent state and logs at ERROR what it loses:

- if a usable snapshot lies at the start of a segment after the damage, the current state
  is intact: the segments before it (and older snapshots) go, and only the history before
  that snapshot is lost (no acknowledged update);
- otherwise the damaged segment is cut at the first bad frame, the segments after it and
  the snapshots newer than the last intact version are deleted: the versions after it are
  lost, and the server resumes at the last intact version.
Where no snapshot holds the version the log starts after (the snapshots deleted after the
log was pruned), no cut can help: the report says so and changes nothing.
Exit status: 0 clean (or repaired), 1 damage found and not cut (or beyond repair), 2 usage errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .durability import UpdateLog
from .records import MAGIC
from .scan import Damage
from .snapshots import SnapshotStore, StateInUse, fsync_dir, lock_state

__all__ = ["Plan", "apply_repair", "main", "plan_repair", "state_main"]

log = logging.getLogger("sjff_server.repair")


@dataclass(frozen=True, slots=True)
class Plan:
    """What a repair of one model's state would do (None fields: nothing to do)."""

    damage: Damage | None
    last_version: int
    keep_from_snapshot: int | None = None  # drop the history before this snapshot
    cut_at: int | None = None  # or cut the log after this version
    lost: str | None = None  # why no cut can give a state: the state the log starts from is gone

    def describe(self) -> str:
        if self.lost is not None:
            return (
                f"cannot be rebuilt: {self.lost}. No cut helps and nothing was changed: restore the snapshots "
                "from a backup, or delete this model version's state to start over from its model file (every "
                "update learnt is then lost)"
            )
        if self.damage is None:
            return f"clean: the log is intact up to version {self.last_version}"
        d = self.damage
        head = ("torn final write: " if d.torn else "damaged: ") + d.describe()
        if self.keep_from_snapshot is not None:
            return (
                f"{head}\n--truncate would drop the log and snapshots before the intact snapshot of version "
                f"{self.keep_from_snapshot}: no acknowledged update is lost, rollback before version "
                f"{self.keep_from_snapshot} becomes impossible"
            )
        newest = d.newest_affected
        lost = f"versions {d.last_good + 1}..{newest}" if newest else f"everything after version {d.last_good}"
        return f"{head}\n--truncate would cut the log after version {d.last_good}: {lost} would be lost"


def _usable(store: SnapshotStore, version: int) -> bool:
    for s in store.list():
        if s.version == version:
            try:
                store.read(s.path)
                return True
            except ValueError:
                return False
    return False


def _newest_usable(store: SnapshotStore) -> int | None:
    for s in reversed(store.list()):
        if _usable(store, s.version):
            return s.version
    return None


def plan_repair(state_dir: Path) -> Plan:
    """Read (never change) the state of one model version and plan the least destructive cut."""
    logdir, snapdir = Path(state_dir) / "log", Path(state_dir) / "snapshots"
    if not logdir.is_dir():
        raise FileNotFoundError(f"{state_dir} holds no update log (expected {logdir})")
    ulog = UpdateLog(logdir)
    store = SnapshotStore(snapdir, writable=False)
    last, damage = ulog.replay(lambda r: None)
    if damage is None:
        newest = _newest_usable(store)
        if last is not None and newest is not None and last < newest:  # the log ends before the snapshot
            gap = Damage(
                logdir,
                0,
                f"the log ends at version {last}, before the snapshot of version {newest}",
                False,
                last,
                0,
                gap=True,
            )
            return Plan(gap, last, keep_from_snapshot=newest)
        segs = ulog.segments()
        start = newest or 0  # the state replay starts from: a snapshot, or the model file (0)
        if segs and segs[0][0] > start and (last or 0) > start:
            lost = f"the log starts after version {segs[0][0]}, and no usable snapshot holds version {segs[0][0]}"
            return Plan(None, last or 0, lost=lost)
        return Plan(None, last or 0)
    if damage.torn:
        return Plan(damage, damage.last_good, cut_at=damage.last_good)
    segs = ulog.segments()
    paths = [p for _, p in segs]
    i = paths.index(damage.path) if damage.path in paths else len(paths)
    # a usable snapshot where an intact segment starts, after the damage, bridges it (the damaged
    # segment's own start counts when the damage is a gap before it)
    for base, _ in segs[i if damage.gap else i + 1 :]:
        if _usable(store, base):
            return Plan(damage, damage.last_good, keep_from_snapshot=base)
    return Plan(damage, damage.last_good, cut_at=damage.last_good)


def apply_repair(state_dir: Path, plan: Plan) -> list[str]:
    """Carry out ``plan``; returns what was removed (each also logged at ERROR). Snapshots
    newer than a cut go before any segment is touched, so a crash midway leaves a state that
    a second run still plans correctly."""
    if plan.damage is None:
        return []
    ulog = UpdateLog(Path(state_dir) / "log")
    store = SnapshotStore(Path(state_dir) / "snapshots")
    done: list[str] = []
    if plan.keep_from_snapshot is not None:
        keep = plan.keep_from_snapshot
        for base, path in ulog.segments():  # every record they hold is <= keep: the snapshot has it
            if base < keep:
                path.unlink()
                done.append(f"deleted log segment {path.name} (history before version {keep})")
        for s in store.list():
            if s.version < keep:
                s.path.unlink()
                done.append(f"deleted snapshot {s.path.name} (before version {keep})")
        done.append(f"lost: no acknowledged update; rollback before version {keep} is no longer possible")
    else:
        d = plan.damage
        for s in store.list():
            if s.version > d.last_good:
                s.path.unlink()
                done.append(f"deleted snapshot {s.path.name} (newer than the cut)")
        fsync_dir(store.dir)
        paths = [p for _, p in ulog.segments()]
        later = paths[paths.index(d.path) + 1 :] if d.path in paths else []
        for path in reversed(later):
            path.unlink()
            done.append(f"deleted log segment {path.name} (after the cut)")
        if d.offset < len(MAGIC):
            d.path.unlink()
            why = "it does not follow the one before" if d.gap else "no intact record"
            done.append(f"deleted log segment {d.path.name} ({why})")
        else:
            ulog.cut(d.path, d.offset)
            done.append(f"cut {d.path.name} at byte {d.offset} ({d.size - d.offset} bytes)")
        newest = d.newest_affected
        lost = f"versions {d.last_good + 1}..{newest}" if newest else f"whatever followed version {d.last_good}"
        done.append(f"lost: {lost}; the model resumes at version {d.last_good}")
    fsync_dir(ulog.dir)
    fsync_dir(store.dir)
    for line in done:
        log.error(line, extra={"state_dir": str(state_dir)})
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sjff state repair", description=__doc__.splitlines()[0])
    ap.add_argument("state_dir", type=Path, help="the server's --state-dir")
    ap.add_argument("--model", required=True, help="model name")
    ap.add_argument("--version", default="1", help="model version directory (default 1)")
    ap.add_argument("--truncate", action="store_true", help="carry out the cut the report describes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="sjff state repair: %(levelname)s: %(message)s")
    target = args.state_dir / args.model / args.version
    if not target.is_dir():
        print(f"sjff state repair: error: {target} does not exist", file=sys.stderr)
        return 2
    try:
        lock = lock_state(target)  # no server may own the state meanwhile
    except (StateInUse, OSError) as exc:
        print(f"sjff state repair: error: {exc}", file=sys.stderr)
        return 2
    try:
        plan = plan_repair(target)
        print(plan.describe())
        if plan.lost is not None:
            return 1
        if plan.damage is None:
            return 0
        if not args.truncate:
            print("nothing was changed (add --truncate to cut)")
            return 1
        apply_repair(target, plan)
        again = plan_repair(target)
        print(again.describe())
        return 0 if again.damage is None else 1
    except (OSError, ValueError) as exc:
        print(f"sjff state repair: error: {exc}", file=sys.stderr)
        return 2
    finally:
        os.close(lock)


def state_main(argv: list[str]) -> int:
    """``sjff state SUBCOMMAND ...`` (registered as the ``state`` command of ``sjff``)."""
    usage = "usage: sjff state repair STATE_DIR --model M [--version V] [--truncate]"
    if argv and argv[0] in ("-h", "--help"):
        print(f"{usage}\n\nsjff state repair --help: the options", file=sys.stdout)
        return 0
    if not argv or argv[0] != "repair":
        got = f"got {argv[0]!r}" if argv else "got none"
        print(
            f"sjff state: error: the only subcommand is 'repair' ({got}); {usage}",
            file=sys.stderr,
        )
        return 2
    return main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
