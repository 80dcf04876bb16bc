"""The update log and the snapshot store: records, segments, torn tails, corruption, repair (real files)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sjff_server.storage.durability import UpdateLog
from sjff_server.storage.records import MAGIC, ROLLBACK, UPDATE, Update, UpdateRecord, decode_payload, encode_record
from sjff_server.storage.scan import LogCorruption
from sjff_server.storage.snapshots import SnapshotStore


def record(version: int, n: int = 2, d: int = 5, seed: int = 0) -> UpdateRecord:
    """An update record; even versions carry a request id and their answer (kind 4 on disk)."""
    rng = np.random.default_rng(version)
    update = Update(
        rng.random((n, d), dtype=np.float32),
        rng.integers(0, 10, n),
        (rng.random(n) > 0.5).astype(np.float32),
        seed,
        0.25,
        request_id=f"req-{version}" if version % 2 == 0 else "",
    )
    odds = rng.standard_normal(n).astype(np.float32) if update.request_id else None
    return UpdateRecord(UPDATE, version, 1.5 * version, update, log_odds=odds)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 40),
    seed=st.integers(0, 2**63 - 1),
    eta=st.floats(1e-6, 1e3),
    rid=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
)
def test_record_round_trip(n, d, seed, eta, rid):
    r = record(3, n, d)
    u = r.update
    odds = np.arange(n, dtype=np.float32) - 0.5 if rid else None
    r = UpdateRecord(UPDATE, 7, 123.0, Update(u.images, u.labels, u.positive, seed, eta, request_id=rid), log_odds=odds)
    frame = encode_record(r)
    back = decode_payload(frame[12:])
    b = back.update
    assert (back.kind, back.version, b.seed, b.eta, back.created) == (UPDATE, 7, seed, eta, 123.0)
    assert b.request_id == rid and (odds is None) == (back.log_odds is None)
    if odds is not None:
        np.testing.assert_array_equal(back.log_odds, odds)
    np.testing.assert_array_equal(b.images, u.images)
    np.testing.assert_array_equal(b.labels, u.labels)
    np.testing.assert_array_equal(b.positive, u.positive)
    rb = decode_payload(encode_record(UpdateRecord(ROLLBACK, 9, 1.0, restored=4))[12:])
    assert (rb.kind, rb.version, rb.restored) == (ROLLBACK, 9, 4)


def write_log(directory, versions, rotate_at=()):
    log = UpdateLog(directory)
    log.open(0)
    for v in versions:
        log.append([record(v)])
        if v in rotate_at:
            log.rotate(v)
    log.close()
    return log


def versions_in(log) -> list[int]:
    seen = []
    last, damage = log.replay(lambda r: seen.append(r.version))
    assert damage is None, damage
    return seen


def test_log_append_scan_and_records(tmp_path):
    log = UpdateLog(tmp_path)
    log.open(0)
    log.append([record(1), record(2)])
    log.append([record(3)])
    log.rotate(3)
    log.append([record(4), record(5)])
    log.close()
    assert [b for b, _ in log.segments()] == [0, 3]
    assert [r.version for r in log.records(0, 5)] == [1, 2, 3, 4, 5]
    assert [r.version for r in log.records(2, 4)] == [3, 4]
    assert [r.version for r in log.records(3, 5)] == [4, 5]
    assert log.replay(lambda r: None) == (5, None)
    log.prune(3)  # versions <= 3 are covered by a snapshot: the first segment goes
    assert [b for b, _ in log.segments()] == [3]


def test_torn_tail_is_cut_at_every_byte_offset(tmp_path):
    """A crash can cut the last write anywhere: recovery keeps exactly the complete frames,
    and only then (the file ends inside a frame whose header is intact, or inside a header)."""
    ((_, path),) = write_log(tmp_path / "ref", [1, 2, 3]).segments()
    full = path.read_bytes()
    ends = [len(MAGIC)]
    for v in (1, 2, 3):
        ends.append(ends[-1] + len(encode_record(record(v))))
    for cut in range(len(MAGIC), len(full) + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / path.name).write_bytes(full[:cut])
        torn = UpdateLog(d)
        kept = []
        last, damage = torn.replay(lambda r: kept.append(r.version))
        complete = sum(1 for e in ends[1:] if e <= cut)
        assert kept == list(range(1, complete + 1)) and (last or 0) == complete, cut
        if cut in ends:
            assert damage is None, cut
            continue
        assert damage is not None and damage.torn and damage.offset == ends[complete] and damage.last_good == complete
        torn.cut_torn(damage)
        assert versions_in(torn) == kept
        torn.open(complete)  # appending after the repair continues cleanly
        torn.append([record(complete + 1)])
        torn.close()
        assert versions_in(torn) == [*kept, complete + 1]


def test_a_damaged_byte_anywhere_is_corruption_never_a_torn_tail(tmp_path):
    """Flip each byte of a 3-record log in turn: every flip is found, none is taken for a torn
    write (which recovery would cut), and the error names the file, offset and versions."""
    ((_, path),) = write_log(tmp_path / "ref", [1, 2, 3]).segments()
    full = path.read_bytes()
    ends = [len(MAGIC)]
    for v in (1, 2, 3):
        ends.append(ends[-1] + len(encode_record(record(v))))
    for pos in range(len(full)):
        d = tmp_path / f"flip{pos}"
        d.mkdir()
        data = bytearray(full)
        data[pos] ^= 0x5A
        (d / path.name).write_bytes(bytes(data))
        last, damage = UpdateLog(d).replay(lambda r: None)
        assert damage is not None and not damage.torn, pos
        frame = sum(1 for e in ends[1:] if e <= pos)  # records intact before the damaged one
        assert damage.last_good == frame and damage.offset == (0 if pos < len(MAGIC) else ends[frame]), pos
        text = damage.describe()
        assert str(d / path.name) in text and f"byte {damage.offset}" in text
        if pos >= len(MAGIC) and frame < 2:  # intact records follow: their versions are named
            assert damage.later == (frame + 2, 3) and f"versions {frame + 1}..3 are affected" in text, (pos, text)


def test_corruption_in_the_newest_segment_is_refused_with_versions(tmp_path):
    """The issue's reproduction in small: many records, a byte flipped at 40 % of the newest
    segment. Nothing may be cut on start; the damage names the versions after it."""
    log = write_log(tmp_path, range(1, 61), rotate_at=(20,))
    path = log.segments()[-1][1]
    data = bytearray(path.read_bytes())
    data[int(len(data) * 0.4)] ^= 0x01
    path.write_bytes(bytes(data))
    size = path.stat().st_size
    last, damage = UpdateLog(tmp_path).replay(lambda r: None)
    assert not damage.torn and damage.later is not None and damage.later[1] == 60
    assert f"versions {damage.last_good + 1}..60 are affected" in damage.describe()
    with pytest.raises(LogCorruption):
        UpdateLog(tmp_path).cut_torn(damage)
    assert path.stat().st_size == size  # nothing was cut


def test_corruption_inside_an_old_segment_is_refused(tmp_path):
    log = write_log(tmp_path, [1, 2, 3], rotate_at=(2,))
    old = log.segments()[0][1]
    data = bytearray(old.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF  # flip a bit in the first record
    old.write_bytes(bytes(data))
    last, damage = UpdateLog(tmp_path).replay(lambda r: None)
    assert not damage.torn and "CRC" in damage.reason and damage.after_segments == 3


def test_a_cut_in_an_older_segment_is_not_a_torn_tail(tmp_path):
    log = write_log(tmp_path, [1, 2, 3], rotate_at=(2,))
    old = log.segments()[0][1]
    old.write_bytes(old.read_bytes()[:-5])  # a torn frame, but more segments follow
    last, damage = UpdateLog(tmp_path).replay(lambda r: None)
    assert not damage.torn and "not the newest" in damage.reason


def test_format_1_segments_are_read_and_appends_start_a_new_segment(tmp_path):
    import struct
    import zlib

    from sjff_server.storage.records import MAGIC_V1, encode_payload

    blob = MAGIC_V1
    for v in (1, 2):
        p = encode_payload(record(v))
        blob += struct.pack("<II", len(p), zlib.crc32(p)) + p
    (tmp_path / f"{0:020d}.log").write_bytes(blob)
    log = UpdateLog(tmp_path)
    assert versions_in(log) == [1, 2]
    log.open(2)
    log.append([record(3)])
    log.close()
    assert [b for b, _ in log.segments()] == [0, 2] and versions_in(log) == [1, 2, 3]
    # a torn v1 tail is still a torn tail; a v1 frame with a damaged length followed by intact frames is not
    (tmp_path / f"{2:020d}.log").unlink()
    first = len(MAGIC_V1) + 8 + len(encode_payload(record(1)))
    data = bytearray(blob)
    data[first + 1] ^= 0x01  # the length of record 2 grows by 256 bytes: it now runs past the end
    (tmp_path / f"{0:020d}.log").write_bytes(bytes(data))
    assert UpdateLog(tmp_path).replay(lambda r: None)[1].torn
    data = bytearray(blob + blob[first:])  # ... unless an intact frame follows (version 2 again is found)
    data[first + 1] ^= 0x01
    (tmp_path / f"{0:020d}.log").write_bytes(bytes(data))
    assert not UpdateLog(tmp_path).replay(lambda r: None)[1].torn


def test_failed_sync_cuts_the_append_back(tmp_path, monkeypatch):
    """fdatasync fails after the bytes were written: the segment is cut back, so the refused
    records can never be replayed; if the cut fails too, the outcome is reported unknown."""
    import sjff_server.storage.durability as durability

    log = UpdateLog(tmp_path)
    log.open(0)
    log.append([record(1)])
    size = log.segments()[0][1].stat().st_size
    calls = []

    def failing_sync(fd):
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durability, "_sync", failing_sync)
    with pytest.raises(durability.StorageError, match="cut back"):
        log.append([record(2), record(3)])
    assert calls and log.segments()[0][1].stat().st_size == size
    monkeypatch.setattr(durability.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises(durability.OutcomeUnknown, match="may or may not be durable"):
        log.append([record(2)])
    monkeypatch.undo()
    assert versions_in(UpdateLog(tmp_path))[:1] == [1]
    with pytest.raises(durability.StorageError, match="not open"):  # the handle is not trusted any more
        log.append([record(2)])


def test_replay_streams_frames_instead_of_reading_segments(tmp_path):
    """Recovery memory is one record, not one segment: replaying a 48 MB segment allocates a
    few MB at most (tracemalloc counts numpy buffers too)."""
    import tracemalloc

    log = UpdateLog(tmp_path)
    log.open(0)
    rng = np.random.default_rng(0)
    images = rng.random((64, 784), dtype=np.float32)
    for v in range(1, 241):  # 240 records of 64 images: 48 MB in one segment
        update = Update(images, np.zeros(64, np.int64), np.ones(64, np.float32), v, 0.1)
        log.append([UpdateRecord(UPDATE, v, 0.0, update)])
    log.close()
    assert log.size_bytes() > 48e6
    count = []
    tracemalloc.start()
    last, damage = UpdateLog(tmp_path).replay(lambda r: count.append(r.version))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (last, damage, len(count)) == (240, None, 240)
    assert peak < 4 * 64 * 784 * 4, peak  # a few records' worth, never the segment


def test_snapshot_store_atomic_and_pruned(tmp_path):
    store = SnapshotStore(tmp_path)
    w = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    for v in (1, 5, 9):
        store.write(v, w, [x * 0 for x in w], {"artefact_sha256": "abc"})
    (tmp_path / "00000000000000000011.npz.part").write_bytes(b"half")  # a crash mid-write
    store = SnapshotStore(tmp_path)
    assert not list(tmp_path.glob("*.part"))
    assert [s.version for s in store.list()] == [1, 5, 9]
    meta, ws, es = store.read(store.list()[-1].path)
    assert meta["version"] == 9 and meta["artefact_sha256"] == "abc"
    np.testing.assert_array_equal(ws[0], w[0])
    assert store.prune(3) is None  # nothing to delete
    assert store.prune(2) == 5
    assert [s.version for s in store.list()] == [5, 9]
    bad = tmp_path / "00000000000000000012.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable snapshot"):
        store.read(bad)


def test_zero_filled_tail_is_a_torn_write(tmp_path):
    """After a power loss, never-synced appended blocks can read back as zeros: no
    acknowledged frame is all zeros, so that tail is cut like a torn write."""
    ((_, path),) = write_log(tmp_path, [1, 2]).segments()
    path.write_bytes(path.read_bytes() + bytes(4096))
    last, damage = UpdateLog(tmp_path).replay(lambda r: None)
    assert last == 2 and damage.torn and "zero bytes" in damage.reason
