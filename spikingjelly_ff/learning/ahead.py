"""Input spikes drawn one batch ahead, on a worker thread, while the current batch presents.

On the CPU a training batch is two jobs of about the same size: drawing its Bernoulli input
(torch's uniforms, then the spike index) and presenting it to the layers (the compiled
kernel). Neither can use a second core on its own (a Mersenne Twister stream is sequential;
every learning step of the kernel depends on the last), but the next batch's draw does not
depend on this batch's presentation: the worker draws batch k+1 while the kernel, which
releases the GIL, presents batch k.

The random stream stays exactly as without the worker: only the worker draws from the
generator while draws are pending, in the order they were asked for, and whenever the batch
that comes is not the one drawn for (or the state is saved, or another path is taken) the
pending draws are finished and the generator goes back to where the first of them began.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

__all__ = ["DrawAhead"]


class DrawAhead:
    """Draws ``draw(x, shown)`` for batches announced with :meth:`submit`, on one worker
    thread; :meth:`get` hands them out as the batches come.

    ``draw`` must read no state that a presentation changes (the rates and the generator
    alone), and nothing but the worker may draw from ``generator`` while draws are pending:
    :meth:`cancel` first. A bound method is held weakly (its owner holds this object), so a
    trainer that drew ahead is freed, and its worker thread ends, when it is dropped. A copy
    (``copy.deepcopy``, pickling) holds no pending draw and starts its own worker."""

    def __init__(self, generator: torch.Generator, draw: Callable[[Tensor, Tensor], Any]) -> None:
        self.generator = generator
        self._draw_ref = weakref.WeakMethod(draw) if hasattr(draw, "__self__") else (lambda: draw)
        self._pool: ThreadPoolExecutor | None = None
        # (x, shown, their versions, future of (generator state before, result, error))
        self._queue: deque[tuple[Tensor, Tensor, tuple[int, int], Future]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def draw(self, x: Tensor, shown: Tensor) -> Any:
        return self._draw_ref()(x, shown)

    def __getstate__(self) -> dict:
        self.cancel()  # the copy's generator is where it would be without draws ahead
        return {"generator": self.generator, "draw": self._draw_ref()}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["generator"], state["draw"])

    def submit(self, x: Tensor, shown: Tensor) -> None:
        """Start drawing for the batch ``(x, shown)`` (images ``[N, D]``, labels ``[N]``) that
        comes after those already submitted. A tensor changed in place before its batch comes is
        drawn again: torch's version counter tells, so a write it does not see (through
        ``.data``, or a numpy view of the memory) must come before the submission."""
        if self._pool is None:  # a worker only for trainers that draw ahead
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sjff-draw-ahead")
        future = self._pool.submit(self._run, x, shown)
        self._queue.append((x, shown, (x._version, shown._version), future))

    def _run(self, x: Tensor, shown: Tensor) -> tuple:
        state = self.generator.get_state()
        try:
            with torch.no_grad():  # as the training step it stands in for (grad mode is per thread)
                return state, self.draw(x, shown), None
        except Exception as err:  # noqa: BLE001 - any error: raised again where the batch is presented
            return state, None, err

    def get(self, x: Tensor, shown: Tensor) -> Any:
        """``draw(x, shown)``: the worker's if this batch is the next one submitted, else drawn
        now. Batches submitted before it never came and are dropped; those submitted after it
        (all, if it was not submitted) are drawn again after it: the stream's order is always
        the order of these calls."""
        if not self._queue:
            return self.draw(x, shown)
        at = self._position(x, shown)
        if at == 0:
            state, result, err = self._queue[0][-1].result()  # waited for before it leaves the queue
            self._queue.popleft()
            if err is None:
                return result
            self._rewind(state)  # and draw again here, which raises the error in its place
            return self.draw(x, shown)
        later = [(px, ps) for px, ps, _, _ in list(self._queue)[0 if at is None else at + 1 :]]
        self.cancel()
        result = self.draw(x, shown)
        for px, ps in later:
            self.submit(px, ps)
        return result

    def _position(self, x: Tensor, shown: Tensor) -> int | None:
        """Where ``(x, shown)`` waits among the submitted batches, or None."""
        for k, (px, ps, (vx, vs), _) in enumerate(self._queue):
            if _same(px, x, vx) and _same(ps, shown, vs):
                return k
        return None

    def cancel(self) -> None:
        """Finish the pending draws and put the generator back to before the first of them."""
        if not self._queue:
            return
        self._rewind(self._queue[0][-1].result()[0])

    def _rewind(self, state: Tensor) -> None:
        for *_, future in self._queue:  # none of them may still be drawing
            future.result()
        self._queue.clear()
        self.generator.set_state(state)


def _same(drawn: Tensor, given: Tensor, version: int) -> bool:
    """Whether ``given`` holds what ``drawn`` held at version ``version`` when it was submitted:
    the same tensor not changed since (its in-place version counter, shared with its views), or
    equal values."""
    if given is drawn:
        return given._version == version
    return (
        drawn._version == version
        and (given.shape, given.dtype, given.device) == (drawn.shape, drawn.dtype, drawn.device)
        and torch.equal(drawn, given)
    )
