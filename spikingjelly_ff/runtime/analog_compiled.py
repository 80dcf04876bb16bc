"""The compiled scoring of a one-layer analog export (``kernels.numba_analog``) beside its graph.

For the exports it covers (:meth:`CompiledScoring.for_export`: one dense layer whose input is
not length-normalised and has no bias, no translated views, a probability or goodness score
of that layer, no ``latent`` output: the paper's analog net) a small batch is scored in one
compiled call instead of onnxruntime's graph, whose fixed per-call cost is most of a lone
request's time in a server. A batch with more than :data:`COMPILED_MAX_LIT` lit inputs (all
its images' nonzero entries together) still runs the graph, whose BLAS product is faster on
dense work (``benchmarks/analog_compiled.py`` measures both and sets the limit).

The graph stays the definition of the model; the kernel computes the same ops and agrees with
it to float32 rounding (tests/library/test_analog_compiled.py), so one batch's answer may
differ from another path's in the last bits (and its label, where two labels' scores tie to
within them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spikingjelly_ff.runtime.onnx_meta import OnnxMeta

__all__ = ["COMPILED_MAX_LIT", "CompiledScoring"]

#: a batch whose images light at most this many inputs together is scored by the kernel, a
#: larger one by the graph (about 33 MNIST images, 6 dense ones; ``benchmarks/analog_compiled.py``)
COMPILED_MAX_LIT = 5000

#: the outputs the kernel writes, which must be all of the graph's
OUTPUTS = ("scores", "probability", "goodness", "label")


@dataclass(frozen=True, eq=False)
class CompiledScoring:
    """What the kernel needs of an export besides its weights: the label codes ``[C, L]``
    (float64), where the image and the label code sit in the layer's input, the kernel's
    codes for the probability and the goodness, and the probability's constants."""

    codes: np.ndarray
    in_features: int
    image: slice
    label: slice
    prob_kind: int
    goodness: int
    alpha: float
    theta: float
    eps: float
    by_goodness: bool
    kernel: Callable  # kernels.numba_analog.score_separable (imported with numba, on load)

    @classmethod
    def for_export(cls, meta: OnnxMeta, outputs: tuple[str, ...], first_dtype) -> CompiledScoring | None:
        """The compiled scoring of an export with settings ``meta``, graph ``outputs`` and its
        first weight stored as ``first_dtype``, or None where the kernel does not cover it or
        is off (no numba, ``SJFF_COMPILED=0``). The first weight must be float64: the separable
        first layer (older exports multiply every label's embedded input in float32)."""
        from spikingjelly_ff.kernels import numba_analog, numba_online

        prob = meta.probability
        layers = meta.layers or ()
        covered = (
            numba_online.enabled()
            and meta.kind == "analog"
            and meta.conv is None
            and len(layers) == 1
            and first_dtype is not None
            and np.dtype(first_dtype) == np.float64
            and not layers[0].normalize_input
            and not layers[0].bias
            and meta.shift_views == 0
            and tuple(meta.score_layers) == (0,)
            and meta.score in ("probability", "goodness")
            and prob.kind in numba_analog.PROBABILITY
            and meta.goodness in numba_analog.GOODNESS
            and tuple(sorted(outputs)) == tuple(sorted(OUTPUTS))
        )
        if not covered:
            return None
        code = meta.label_code
        return cls(
            codes=np.asarray(code.codes(), dtype=np.float64),
            in_features=int(meta.in_features),
            image=code.image_slice(meta.in_features),
            label=code.label_slice(meta.in_features),
            prob_kind=numba_analog.PROBABILITY[prob.kind],
            goodness=numba_analog.GOODNESS[meta.goodness],
            alpha=float(prob.alpha),
            theta=float(prob.theta),
            eps=float(prob.eps),
            by_goodness=meta.score == "goodness",
            kernel=numba_analog.score_separable,
        )

    def terms(self, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image weights ``[D, H]`` float32, label term ``[C, H]`` float64) of the layer's
        weight ``[H, D']`` (float32): what depends on the weights alone, computed once per
        version. The image weights of input positions the label code takes (a one-hot code
        written over the image) are zero, as the graph masks those inputs."""
        w = np.asarray(weight, dtype=np.float32)
        w_img = np.zeros((self.in_features, w.shape[0]), dtype=np.float32)
        w_img[self.image] = w[:, self.image].T
        label_term = np.ascontiguousarray(self.codes @ w[:, self.label].T.astype(np.float64))
        return w_img, label_term

    def score(self, x: np.ndarray, terms: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's outputs for images ``x`` ``[N, D]`` float32, from :meth:`terms`."""
        w_img, label_term = terms
        return self.kernel(
            x, w_img, label_term, self.prob_kind, self.goodness, self.alpha, self.theta, self.eps, self.by_goodness
        )

    @staticmethod
    def takes(x: np.ndarray) -> bool:
        """Whether the kernel scores the batch ``x`` (few enough lit inputs)."""
        return int(np.count_nonzero(x)) <= COMPILED_MAX_LIT
