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
is refused. The reader takes the file's bytes once and checks, probes and parses those same
bytes, so a file replaced or rewritten meanwhile cannot slip past the check.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["MAGIC", "USERBLOCK", "check_userblock", "probe_unchecked", "stamp_userblock"]

USERBLOCK = 512  # bytes; HDF5's smallest user block
MAGIC = b"sjff-nir sha256 "
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: seconds the child of :func:`probe_unchecked` may take (it parses a file of a few MiB in
#: about half a second, most of it imports): past it, the HDF5 library is taken to loop
#: forever. The environment variable ``SJFF_PROBE_SECONDS`` sets another bound, 0.1 to 86400.
PROBE_SECONDS = 60.0
#: what the child runs (argv: the file's name for messages, the parent's import path as JSON,
#: its own time limit; stdin: the file's bytes, the very bytes the parent then parses): the
#: artefact reader without the probe, saying "imported" once it could import it and "done"
#: once the reading ended; its Python errors are the parent's to report (it reads the bytes
#: again), only a reading that never says "done" is the probe's. The alarm ends a child whose
#: parent died (nothing else would stop one stuck in the HDF5 library).
_PROBE = (
    "import json, signal, sys\n"
    "sys.path[:] = json.loads(sys.argv[2])\n"
    "if hasattr(signal, 'alarm'):\n    signal.alarm(int(sys.argv[3]))\n"
    "from spikingjelly_ff.runtime.artifact import read_artifact_unprobed\n"
    "data = sys.stdin.buffer.read()\n"
    "print('imported', flush=True)\n"
    "try:\n    read_artifact_unprobed(sys.argv[1], data)\nexcept Exception:\n    pass\n"
    "print('done', flush=True)\n"
)
#: signals that stop a child from outside (the OOM killer, Ctrl-C, a shutdown): no verdict on the file
_STOPPED = {"SIGKILL", "SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"}


def _sum_after_block(data: bytes | memoryview) -> str:
    return hashlib.sha256(memoryview(data)[USERBLOCK:]).hexdigest()


def stamp_userblock(path: str | os.PathLike) -> None:
    """Write the sum line into the user block of ``path``, an HDF5 file created with
    ``userblock_size=USERBLOCK`` and closed."""
    with open(path, "rb+") as fh:
        line = MAGIC + _sum_after_block(fh.read()).encode() + b"\n"
        fh.seek(0)
        fh.write(line.ljust(USERBLOCK, b"\0"))


def check_userblock(data: bytes, name: str | os.PathLike = "") -> bool:
    """True when ``data``, a file's bytes, carries a sum line that they match; False for a
    file without one (HDF5 data from byte 0); ValueError (naming ``name``) for a sum that does
    not match or a start that is neither."""
    head = data[:USERBLOCK]
    if head.startswith(HDF5_SIGNATURE):
        return False
    if not head.startswith(MAGIC) or len(head) < USERBLOCK:
        raise ValueError(f"{name}: not a spike artefact (its first bytes are neither a checksum line nor HDF5)")
    stored = head[len(MAGIC) :].split(b"\n", 1)[0]
    if stored != _sum_after_block(data).encode():
        raise ValueError(f"{name}: the file's bytes do not match its checksum (damaged or edited)")
    return True


def probe_unchecked(data: bytes, name: str | os.PathLike = "") -> None:
    """Parse ``data``, the bytes of a file without the sum line (named ``name`` in messages),
    in a child process first; ValueError when the child's reading does not end (the HDF5
    library crashed on a damaged structure, or did not finish in :data:`PROBE_SECONDS`: it
    looped), or was stopped from outside. Where no child can run or import this library (a
    frozen application, another environment), the bytes are left to the caller's own reading,
    as before the probe."""
    bound = _probe_seconds()
    if getattr(sys, "frozen", False) or not sys.executable:
        return
    # -P, the folder this library was imported from first, then the parent's path less the
    # working directory: the child reads with what the parent does, not with what lies there
    home = str(Path(__file__).resolve().parents[2])
    paths = [home, *(p for p in sys.path if isinstance(p, str) and p)]
    path = str(name)
    cmd = [sys.executable, "-P", "-c", _PROBE, path, json.dumps(paths), str(math.ceil(bound) + 5)]
    advice = (
        "the file carries no checksum (written before spike artefacts carried one), so its damage "
        "reached the HDF5 library: export the model again from its run"
    )
    try:
        # a child that ends without reading its input is no error here (run ignores the broken pipe)
        proc = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=bound)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{path}: reading it did not finish in {bound:g} s; {advice}") from None
    except OSError:  # no child process here (a sandbox): read in process, as before
        return
    said = proc.stdout.split()
    if b"imported" not in said or b"done" in said:
        return  # no verdict (the child could not import this library), or the reading ended
    code = proc.returncode
    if code < 0 and _signal_name(-code) in _STOPPED:
        raise ValueError(
            f"{path}: the process reading it first was stopped ({_signal_name(-code)}) before it finished: "
            "no verdict on the file; load it again"
        )
    how = f"signal {-code}" if code < 0 else f"exit code {code}"
    raise ValueError(f"{path}: reading it crashed the HDF5 library ({how}); {advice}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _probe_seconds() -> float:
    text = os.environ.get("SJFF_PROBE_SECONDS", "")
    if not text:
        return PROBE_SECONDS
    try:
        bound = float(text)
    except ValueError:
        bound = -1.0
    if not 0.1 <= bound <= 86400:
        raise ValueError(f"SJFF_PROBE_SECONDS must be a number of seconds from 0.1 to 86400, got {text!r}")
    return bound
