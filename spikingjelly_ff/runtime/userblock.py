"""The SHA-256 of a spike artefact's bytes, kept in front of its HDF5 data.

HDF5 reserves a *user block* at the start of a file that its readers skip (they find the
superblock at offset 512, 1024, ...). An artefact writes there one line,
``sjff-nir sha256 <hex>\\n``, the sum of every byte after the block, and a reader checks it
before the HDF5 library parses anything: a damaged object header had made ``h5py`` crash the
process or loop forever, which no exception handler reaches. The sum covers the NIR nodes
other readers use (neuron parameters, edges) as well as our own group.

A file without the line (written before it, HDF5 data from byte 0) is left to the checks
inside the file; one with neither the line nor HDF5's signature at byte 0 is refused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["MAGIC", "USERBLOCK", "check_userblock", "stamp_userblock"]

USERBLOCK = 512  # bytes; HDF5's smallest user block
MAGIC = b"sjff-nir sha256 "
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _sum_after_block(fh) -> str:
    fh.seek(USERBLOCK)
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def stamp_userblock(path: str | os.PathLike) -> None:
    """Write the sum line into the user block of ``path``, an HDF5 file created with
    ``userblock_size=USERBLOCK`` and closed."""
    with open(path, "rb+") as fh:
        line = MAGIC + _sum_after_block(fh).encode() + b"\n"
        fh.seek(0)
        fh.write(line.ljust(USERBLOCK, b"\0"))


def check_userblock(path: str | os.PathLike) -> bool:
    """True when ``path`` carries a sum line that its bytes match; False for a file without
    one (HDF5 data from byte 0); ValueError for a sum that does not match or a start that is
    neither."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(USERBLOCK)
        if head.startswith(HDF5_SIGNATURE):
            return False
        if not head.startswith(MAGIC) or len(head) < USERBLOCK:
            raise ValueError(f"{path}: not a spike artefact (its first bytes are neither a checksum line nor HDF5)")
        stored = head[len(MAGIC) :].split(b"\n", 1)[0]
        if stored != _sum_after_block(fh).encode():
            raise ValueError(f"{path}: the file's bytes do not match its checksum (damaged or edited)")
    return True
