"""The SHA-256 of a spike artefact's bytes, kept in front of its HDF5 data.

HDF5 reserves a *user block* at the start of a file that its readers skip (they find the
superblock at offset 512, 1024, ...). An artefact writes there one line,
``sjff-nir sha256 <hex>\\n``, the sum of every byte after the block, and a reader checks it
before the HDF5 library parses anything: a damaged object header had made ``h5py`` crash the
process or loop forever, which no exception handler reaches. The sum covers the NIR nodes
other readers use (neuron parameters, edges) as well as our own group.

A file without the line (written before it, HDF5 data from byte 0) is left to the checks
inside the file, but HDF5 parses it first in a child process (:func:`probe_unchecked`): a
child that dies of a signal or does not finish refuses the file, so its damage cannot crash
or hang the process that loads it. One with neither the line nor HDF5's signature at byte 0
is refused.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["MAGIC", "USERBLOCK", "check_userblock", "probe_unchecked", "stamp_userblock"]

USERBLOCK = 512  # bytes; HDF5's smallest user block
MAGIC = b"sjff-nir sha256 "
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: seconds the child of :func:`probe_unchecked` may take (it parses a file of a few MiB in
#: about half a second, most of it imports): past it, the HDF5 library is taken to loop
#: forever. The environment variable ``SJFF_PROBE_SECONDS`` sets another bound.
PROBE_SECONDS = 60.0
#: what the child runs: the artefact reader without the probe; its Python errors are the
#: parent's to report (it reads the file again), only a signal or no end is the probe's
_PROBE = (
    "import sys\n"
    "from spikingjelly_ff.runtime.artifact import read_artifact_unprobed\n"
    "try:\n    read_artifact_unprobed(sys.argv[1])\nexcept Exception:\n    pass\n"
)


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


def probe_unchecked(path: str | os.PathLike) -> None:
    """Parse ``path``, a file without the sum line, in a child process first; ValueError when
    the child dies of a signal (the HDF5 library crashed on a damaged structure) or does not
    finish in :data:`PROBE_SECONDS` (it looped). Where no child can run, or it cannot import
    this library, the file is left to the caller's own reading, as before the probe."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    bound = _probe_seconds()
    advice = (
        "the file carries no checksum (written before spike artefacts carried one), so its damage "
        "reached the HDF5 library: export the model again from its run"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, str(path)], capture_output=True, timeout=bound, env=env
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"{path}: reading it did not finish in {bound:g} s; {advice}") from None
    except OSError:  # no child process here (a sandbox): read in process, as before
        return
    if proc.returncode < 0:
        raise ValueError(f"{path}: reading it crashed the HDF5 library (signal {-proc.returncode}); {advice}")


def _probe_seconds() -> float:
    text = os.environ.get("SJFF_PROBE_SECONDS", "")
    if not text:
        return PROBE_SECONDS
    try:
        bound = float(text)
    except ValueError:
        bound = -1.0
    if not bound > 0 or bound == float("inf"):
        raise ValueError(f"SJFF_PROBE_SECONDS must be a positive number of seconds, got {text!r}")
    return bound
