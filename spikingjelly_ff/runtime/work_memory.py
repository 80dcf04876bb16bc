"""Working memory of inference: what scoring a batch allocates beyond its images, estimated
from a model's shapes so that a server can count it before it runs the batch.

Each estimate is an upper bound of the peak of numpy's allocations, written from the code
that allocates (``simulation.scoring``, ``simulation.conv``, the ONNX graph's activations), and
checked against the traced peak in ``tests/library/test_work_memory.py``: at least the peak,
at most about 1.6 times it. Units: bytes; shapes as in the modules they describe.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WorkMemory", "analog_work", "conv_work", "dense_work", "FLOAT", "DRAW_SCRATCH"]

FLOAT = 4  # bytes of a float32
#: scratch of a Bernoulli draw besides its spikes (``encoding._DRAW_BLOCK`` uniforms, their
#: booleans, those cast to float32 as they are written, index temporaries), and of the other
#: bounded temporaries: a constant
DRAW_SCRATCH = 4 << 20


@dataclass(frozen=True)
class WorkMemory:
    """``fixed + per_row * min(rows, rows_cap) + kept_per_row * rows`` bytes: the peak a call
    on ``rows`` images holds besides the images (``rows_cap``: the rows the model works on at a
    time, None: all; ``kept_per_row``: what every row keeps until the call returns, its
    outputs)."""

    fixed: int
    per_row: int
    rows_cap: int | None = None
    kept_per_row: int = 0

    def bytes(self, rows: int) -> int:
        rows = max(0, int(rows))
        part = rows if self.rows_cap is None else min(rows, self.rows_cap)
        return self.fixed + self.per_row * part + self.kept_per_row * rows

    def rows_bytes(self, rows: int) -> int:
        """:meth:`bytes` less the fixed part: what ``rows`` more images add to a batch."""
        return self.bytes(rows) - self.fixed

    def max(self, other: WorkMemory) -> WorkMemory:
        """A bound of two phases that run one after the other (each frees its arrays)."""
        caps = [c for c in (self.rows_cap, other.rows_cap) if c is not None]
        cap = max(caps) if len(caps) == 2 else None
        return WorkMemory(
            max(self.fixed, other.fixed),
            max(self.per_row, other.per_row),
            cap,
            max(self.kept_per_row, other.kept_per_row),
        )


def _chain(steps: int, widths: list[int]) -> int:
    """Peak per row of the layers' loop (``score_labels``): layer i's current and spikes
    while the previous layer's current (during the product) or spikes are still held."""
    peak, prev = 0, 0
    for h in widths:
        peak = max(peak, 2 * prev + h, prev + 2 * h)
        prev = h
    return FLOAT * steps * peak


def dense_work(
    steps: int,
    in_features: int,
    embedded: int,
    label_width: int,
    widths: list[int],
    num_labels: int,
    share: bool = True,
    coding: str = "bernoulli",
    latent: bool = False,
) -> WorkMemory:
    """``runtime.SpikeModel.scores`` (and, with ``latent``, ``latent``) on ``rows`` images of
    ``in_features`` pixels: ``steps`` time steps, embedded inputs of width ``embedded`` of
    which ``label_width`` carry the label code, hidden layers ``widths``, ``num_labels``
    labels; ``share``: the artefact's ``share_image_spikes``."""
    t, c, h1 = steps, num_labels, widths[0]
    chunk = min(t, 32)  # scoring._CHUNK_STEPS: image spikes drawn and multiplied this many steps at a time
    labels_out = FLOAT * (c + 2) * sum(widths)  # every label's final traces, membranes, traces
    if share:
        if coding == "regular":  # regular_spikes: two [T + 1] or [T] arrays at once
            draw = 2 * FLOAT * (t + 1) * in_features
        else:  # one chunk of dense spikes, the live positions and their rates
            draw = FLOAT * chunk * in_features + 12 * in_features
        # the image rates (and the product they are clipped from), their copy for the draw
        images = FLOAT * (2 * in_features + embedded) + draw + FLOAT * t * h1
        # the shared image current, the label draws (uniforms and their booleans at once) and
        # one label's spikes, current and layer chain
        labels = FLOAT * t * h1 + 6 * t * label_width + FLOAT * t * label_width + _chain(t, widths)
        per_row = max(images, labels + labels_out)
    else:  # every label's spikes and currents drawn at once
        draw = FLOAT * t * c * embedded + 12 * c * embedded
        per_row = FLOAT * c * embedded + max(draw + FLOAT * t * c * h1, FLOAT * t * c * h1 + _chain(t, widths))
        per_row += labels_out
    # the image part of layer 1's weights, copied (fancy indexing) for the shared current
    fixed = DRAW_SCRATCH + (FLOAT * h1 * in_features if share else 0)
    work = WorkMemory(fixed, per_row)
    if latent:  # one label per image: its spikes drawn dense, then the layers
        draw = FLOAT * t * embedded + 12 * embedded + 2 * FLOAT * embedded  # spikes, live inputs, rates
        # every layer's output and membrane, its membrane and trace while it runs, the counts joined
        layers = FLOAT * t * embedded + _chain(t, widths) + FLOAT * 4 * sum(widths)
        work = work.max(WorkMemory(DRAW_SCRATCH, max(draw + FLOAT * t * h1, layers)))
    return work


def conv_work(
    steps: int,
    in_features: int,
    label_width: int,
    units: list[int],
    pooled: list[int],
    frame_patches: list[int],
    chunk: int,
    conv_pass: int,
    labelled: bool = True,
    latent: bool = False,
) -> WorkMemory:
    """``runtime.SpikeConvModel.scores`` (and, with ``latent``, ``latent``): ``units[i]``
    neurons of layer i's map, ``pooled[i]`` of its pooled spikes (what layer i + 1 sees),
    ``frame_patches[i]`` floats of one frame's unfolded patches (``I * K^2 * OH * OW``; the
    convolution unfolds ``conv_pass`` frames at a time). Scoring takes ``chunk`` images at a
    time; ``latent`` presents them all at once. ``labelled``: the net sees a label (not a
    competitive one)."""
    t = steps

    def stack(first: int, extra: int) -> int:
        # layer 0: its current (the label part and the sum, ``extra`` more while the conv part
        # is still held) and spikes; a later layer: the previous layer's spikes and pooled
        # spikes while its conv current (parts, then joined) and spikes are made
        peak = (2 + extra) * units[0]
        for i in range(1, len(units)):
            peak = max(peak, units[i - 1] + pooled[i - 1] + 2 * units[i])
        return FLOAT * t * (in_features + 2 * label_width + first + peak) + FLOAT * 3 * sum(units)

    fixed = DRAW_SCRATCH + 2 * FLOAT * conv_pass * max(frame_patches)
    # a labelled net keeps layer 1's conv current for every label (score_conv_labels)
    work = WorkMemory(fixed, stack(units[0] if labelled else 0, 0), chunk)
    if latent:
        work = work.max(WorkMemory(fixed, stack(0, 1 if labelled else 0)))
    return work


def analog_work(
    views: int, passes: int, embedded: int, units: list[int], outputs: int, run_bytes: int, patches: int = 0
) -> WorkMemory:
    """An analog graph on onnxruntime: per image ``views`` views times ``passes`` passes (one
    per label; one for a competitive net) of the embedded input (``embedded`` floats) and, per
    layer of ``units`` neurons, its pre-activation, activation and normalised copy, and the
    largest layer's unfolded patches (``patches`` floats, a conv net's), an estimate of what
    onnxruntime allocates, which numpy's tracing cannot see; ``outputs`` floats kept per
    image. A batch runs in parts of at most ``run_bytes`` of activations (``rows_cap``: the
    rows of a part)."""
    per_row = FLOAT * views * passes * (embedded + 3 * sum(units) + patches)
    return WorkMemory(DRAW_SCRATCH, per_row, max(1, run_bytes // per_row), FLOAT * outputs)
