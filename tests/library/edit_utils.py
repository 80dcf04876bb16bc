"""Helpers for tests that edit a stored model by hand, as a crafted file would be edited:
the sums a writer stamps would no longer match, so the checks that then run are the
loader's own."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import h5py
import onnx

from spikingjelly_ff.runtime.onnx_checksum import DIGEST_KEY
from spikingjelly_ff.runtime.userblock import check_userblock, stamp_userblock


def save_edited(proto: onnx.ModelProto, path) -> None:
    """Save a hand-edited ONNX export without its checksum, as a file written before exports
    carried one."""
    kept = [p for p in proto.metadata_props if p.key != DIGEST_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(path))


@contextmanager
def edit_h5(path):
    """A spike artefact open for writing (h5py, ``r+``); afterwards the sum of its bytes in
    front of the HDF5 data is stamped again (the in-file sum, attribute ``sha256``, stays as
    the edit leaves it)."""
    stamped = check_userblock(Path(path).read_bytes(), path)
    with h5py.File(path, "r+") as f:
        yield f
    if stamped:
        stamp_userblock(path)
