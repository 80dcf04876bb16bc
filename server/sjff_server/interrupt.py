"""Worker threads whose running job can be interrupted (deadlines inside time-step loops).

The spiking runtime simulates time step by step in Python. When every request of a batch has
gone (deadline exceeded or cancelled), :meth:`WorkerPool.interrupt` raises
:class:`Interrupted` inside the worker thread at its next Python bytecode, i.e. inside the
time-step loop, so no more CPU is spent on answers nobody waits for. This is safe for
inference because a run only reads immutable weights and builds fresh arrays. Learning is
never interrupted.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Interrupted", "Job", "WorkerPool"]


class Interrupted(Exception):  # noqa: N818 - reads as an event, like asyncio.CancelledError
    """Raised inside a worker thread whose job was interrupted."""


class Job:
    """A function queued on a :class:`WorkerPool`; ``future`` resolves on the event loop."""

    __slots__ = ("fn", "future", "loop", "thread", "state", "id")
    _ids = itertools.count()

    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn: Callable[[], Any] | None = fn
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.thread: int | None = None
        self.state = "queued"  # queued -> running -> done
        self.id = next(self._ids)


def _set(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(result)
    else:
        fut.set_exception(exc)


class WorkerPool:
    """``size`` daemon threads running :class:`Job` s in submission order."""

    def __init__(self, size: int, name: str = "sjff-worker") -> None:
        self._q: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._main, name=f"{name}-{i}", daemon=True) for i in range(max(1, size))
        ]
        for t in self._threads:
            t.start()

    @property
    def size(self) -> int:
        return len(self._threads)

    def submit(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> Job:
        job = Job(fn, loop)
        self._q.put(job)
        return job

    def interrupt(self, job: Job) -> bool:
        """Stop ``job``: dropped if still queued, interrupted if running. True if it was."""
        with self._lock:
            if job.state == "queued":
                job.state = "done"
                job.fn = None  # it waits in the queue until a worker skips it: let its inputs go now
                job.loop.call_soon_threadsafe(_set, job.future, None, Interrupted("interrupted before it ran"))
                return True
            if job.state != "running" or job.thread is None:
                return False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(job.thread), ctypes.py_object(Interrupted))
            job.state = "interrupting"
            return True

    def close(self) -> None:
        for _ in self._threads:
            self._q.put(None)

    def _main(self) -> None:
        ident = threading.get_ident()
        job: Job | None = None
        while True:
            try:
                job = self._q.get()
                if job is None:
                    return
                with self._lock:
                    if job.state != "queued":
                        continue
                    job.state = "running"
                    job.thread = ident
                result, exc = None, None
                fn, job.fn = job.fn, None
                try:
                    result = fn()
                except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                    exc = e
                with self._lock:
                    interrupted = job.state == "interrupting"
                    job.state = "done"
                if interrupted and exc is None:
                    exc = Interrupted("interrupted")
                job.loop.call_soon_threadsafe(_set, job.future, result, exc)
                job = fn = result = exc = None  # hold no inputs or outputs while idle
            except Interrupted:
                # The asynchronous exception arrived after the job's function returned (it was
                # asked for while the job ran): settle the job and carry on.
                if job is not None:
                    with self._lock:
                        job.state = "done"
                    job.loop.call_soon_threadsafe(_set, job.future, None, Interrupted("interrupted"))
                    job = fn = result = exc = None
