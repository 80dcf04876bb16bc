"""Label embeddings: how a candidate label is written into an FF network's input.

One torch module, :class:`LabelEmbedding`, wraps a torch-free
:class:`~spikingjelly_ff.functional.labels.LabelCode` (what runtimes and exports read) and
writes it generically: the embedded input ``[N, D']`` holds the image at ``image_slice`` and
the label's code (a row of the ``codes`` buffer, ``[C, L]``) at ``label_slice``. So a first
layer can compute the image's current once and add one per-label term instead of running
``C`` full copies of the input.

* ``PatternEmbedding`` appends a fixed random binary pattern per class (the paper:
  100 bits, each on with probability 0.3), so ``D' = D + bits``.
* ``OneHotOverlay`` overwrites the first ``C`` inputs with a one-hot code (Hinton's
  choice), so ``D' = D``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikingjelly_ff.functional.labels import LabelCode
from spikingjelly_ff.functional.params import EmbeddingParams

__all__ = ["LabelEmbedding", "OneHotOverlay", "PatternEmbedding", "build_embedding"]


class LabelEmbedding(nn.Module):
    """Images ``[N, D]`` and labels ``[N]`` -> embedded inputs ``[N, D']`` for one
    :class:`LabelCode`. A pattern code's ``patterns`` ``[C, bits]`` is a buffer, so it travels
    with the state dict; loading one (or :meth:`set_patterns`) rebuilds the code."""

    def __init__(self, code: LabelCode, params: EmbeddingParams) -> None:
        super().__init__()
        self.params = params  # the settings this embedding was built from
        if code.kind == "pattern":
            self.register_buffer("patterns", torch.from_numpy(code.patterns.copy()))
        # derived from the code, so not saved: a state dict holds ``patterns`` alone
        self.register_buffer("codes", torch.empty(0), persistent=False)
        self.register_buffer("neutral_code", torch.empty(0), persistent=False)
        self._set_code(code)
        self.register_load_state_dict_post_hook(_after_load)

    def _set_code(self, code: LabelCode) -> None:
        self._code = code
        device = self.codes.device
        self.codes = torch.tensor(code.codes(), device=device)  # [C, L] float32, scale applied
        self.neutral_code = torch.tensor(code.neutral(), device=device)  # [L]

    def _sync(self) -> None:
        """Rebuild the code from the ``patterns`` buffer (after it was loaded)."""
        if self.kind == "pattern":
            patterns = self.patterns.detach().cpu().numpy()
            self._set_code(LabelCode("pattern", self.num_classes, patterns, self.scale))

    def set_patterns(self, patterns: Tensor) -> None:
        """Replace the label patterns ``[C, bits]`` (e.g. ones trained elsewhere)."""
        with torch.no_grad():
            self.patterns.copy_(patterns)
        self._sync()

    @property
    def label_code(self) -> LabelCode:
        """This embedding as a torch-free :class:`LabelCode` (built once, not per call)."""
        return self._code

    @property
    def kind(self) -> str:
        return self._code.kind

    @property
    def num_classes(self) -> int:
        return self._code.num_classes

    @property
    def scale(self) -> float:
        return self._code.scale

    def out_features(self, in_features: int) -> int:
        return self._code.input_width(in_features)

    def label_slice(self, in_features: int) -> slice:
        """Positions of the embedded input that depend on the label."""
        return self._code.label_slice(in_features)

    def image_slice(self, in_features: int) -> slice:
        """Positions of the embedded input copied from the same positions of the image."""
        return self._code.image_slice(in_features)

    def code(self, labels: Tensor) -> Tensor:
        """The label part alone, ``[N, L]``."""
        return self.codes[labels]

    def _write(self, x: Tensor, label_part: Tensor) -> Tensor:
        """``[..., N, D']`` from images ``[N, D]`` and label parts broadcastable to ``[..., N, L]``."""
        d = x.shape[-1]
        lead = label_part.shape[:-2]
        out = x.new_empty((*lead, x.shape[0], self.out_features(d)))
        img = self.image_slice(d)
        out[..., img] = x[:, img]
        out[..., self.label_slice(d)] = label_part.to(x.dtype)
        return out

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        return self._write(x, self.code(labels))

    def all_labels(self, x: Tensor) -> Tensor:
        """Every label's embedded input, ``[C, N, D']``."""
        return self._write(x, self.codes.unsqueeze(1).expand(-1, x.shape[0], -1))

    def neutral(self, x: Tensor) -> Tensor:
        """Input with the code's neutral label part (:meth:`LabelCode.neutral`), used by the
        linear readout."""
        return self._write(x, self.neutral_code.expand(x.shape[0], -1))


def _after_load(module: LabelEmbedding, _incompatible_keys) -> None:
    module._sync()  # a module-level function, so a pickled module keeps no lambda


class PatternEmbedding(LabelEmbedding):
    """Append ``scale * patterns[label]`` (``patterns`` ``[C, bits]`` of 0/1, drawn from
    ``seed`` with torch's generator) to the input."""

    def __init__(
        self, num_classes: int = 10, bits: int = 100, density: float = 0.3, seed: int = 0, scale: float = 1.0
    ) -> None:
        if bits < 1 or not 0.0 < density < 1.0:
            raise ValueError(f"pattern embedding needs bits >= 1 and 0 < density < 1, got {bits=}, {density=}")
        g = torch.Generator().manual_seed(seed)
        patterns = (torch.rand(num_classes, bits, generator=g) < density).float()
        code = LabelCode("pattern", num_classes, patterns.numpy(), scale)
        super().__init__(code, EmbeddingParams("pattern", bits, density, scale, seed))


class OneHotOverlay(LabelEmbedding):
    """Write ``scale * onehot(label)`` over the first ``C`` inputs."""

    def __init__(self, num_classes: int = 10, scale: float = 1.0) -> None:
        super().__init__(LabelCode("onehot", num_classes, None, scale), EmbeddingParams("onehot", scale=scale))


def build_embedding(kind: str, num_classes: int, bits: int, density: float, seed: int, scale: float) -> LabelEmbedding:
    """Embedding from config fields; ``kind`` is ``pattern`` or ``onehot``."""
    if kind == "pattern":
        return PatternEmbedding(num_classes, bits, density, seed, scale)
    if kind == "onehot":
        return OneHotOverlay(num_classes, scale)
    raise ValueError(f"unknown label embedding {kind!r}; choose 'pattern' or 'onehot'")
