"""Label embeddings: how a candidate label is written into an FF network's input.

* ``PatternEmbedding`` appends a fixed random binary pattern per class (the paper:
  100 bits, each on with probability 0.3), so ``D' = D + bits``.
* ``OneHotOverlay`` overwrites the first ``C`` inputs with a one-hot code (Hinton's
  choice), so ``D' = D``.

Both map images ``[N, D]`` and labels ``[N]`` to ``[N, D']`` and expose ``all_labels``,
``[C, N, D']``, for scoring every label in one batched pass. ``label_code`` is the same
embedding as a torch-free :class:`~spikingjelly_ff.functional.labels.LabelCode` (what runtimes and
exports read); its ``image_slice`` and ``label_slice`` say which embedded positions come
from the image and which hold the label code, so a first layer can compute the image's
current once and add one per-label term instead of running ``C`` full copies of the input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikingjelly_ff.functional.labels import LabelCode
from spikingjelly_ff.functional.params import EmbeddingParams

__all__ = ["LabelEmbedding", "OneHotOverlay", "PatternEmbedding", "build_embedding"]


class LabelEmbedding(nn.Module):
    """What both embeddings share: the layout of the embedded input, read from
    :attr:`label_code` (the torch-free description each subclass gives of itself)."""

    @property
    def label_code(self) -> LabelCode:
        raise NotImplementedError(f"{type(self).__name__} must define label_code")

    def out_features(self, in_features: int) -> int:
        return self.label_code.input_width(in_features)

    def label_slice(self, in_features: int) -> slice:
        """Positions of the embedded input that depend on the label."""
        return self.label_code.label_slice(in_features)

    def image_slice(self, in_features: int) -> slice:
        """Positions of the embedded input copied from the same positions of the image."""
        return self.label_code.image_slice(in_features)


class PatternEmbedding(LabelEmbedding):
    """Append ``scale * patterns[label]`` (``patterns`` ``[C, bits]`` of 0/1, fixed at
    construction) to the input. ``patterns`` is a buffer, so it travels with the state dict."""

    kind = "pattern"

    def __init__(
        self, num_classes: int = 10, bits: int = 100, density: float = 0.3, seed: int = 0, scale: float = 1.0
    ) -> None:
        super().__init__()
        if bits < 1 or not 0.0 < density < 1.0:
            raise ValueError("pattern embedding needs bits >= 1 and 0 < density < 1")
        g = torch.Generator().manual_seed(seed)
        patterns = (torch.rand(num_classes, bits, generator=g) < density).float()
        self.register_buffer("patterns", patterns)
        self.num_classes = num_classes
        self.bits = bits
        self.density = density
        self.seed = seed
        self.scale = scale

    @property
    def params(self) -> EmbeddingParams:
        """The settings this embedding was built from."""
        return EmbeddingParams("pattern", self.bits, self.density, self.scale, self.seed)

    @property
    def label_code(self) -> LabelCode:
        """This embedding as a torch-free :class:`LabelCode` (patterns copied to the CPU)."""
        return LabelCode("pattern", self.num_classes, self.patterns.detach().cpu().numpy(), self.scale)

    def code(self, labels: Tensor) -> Tensor:
        """The label part alone, ``[N, bits]``."""
        return self.patterns[labels] * self.scale

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        return torch.cat((x, self.code(labels).to(x.dtype)), dim=-1)

    def all_labels(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        codes = (self.patterns.to(x.dtype) * self.scale).unsqueeze(1).expand(-1, n, -1)
        return torch.cat((x.unsqueeze(0).expand(self.num_classes, -1, -1), codes), dim=-1)

    def neutral(self, x: Tensor) -> Tensor:
        """Input with the mean of all patterns, used by the linear readout."""
        mean = (self.patterns.mean(0) * self.scale).to(x.dtype).expand(x.shape[0], -1)
        return torch.cat((x, mean), dim=-1)


class OneHotOverlay(LabelEmbedding):
    """Write ``scale * onehot(label)`` over the first ``C`` inputs."""

    kind = "onehot"

    def __init__(self, num_classes: int = 10, scale: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = scale

    @property
    def params(self) -> EmbeddingParams:
        """The settings this embedding was built from."""
        return EmbeddingParams("onehot", scale=self.scale)

    @property
    def label_code(self) -> LabelCode:
        """This embedding as a torch-free :class:`LabelCode`."""
        return LabelCode("onehot", self.num_classes, None, self.scale)

    def code(self, labels: Tensor) -> Tensor:
        return nn.functional.one_hot(labels, self.num_classes).float() * self.scale

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        out = x.clone()
        out[:, : self.num_classes] = self.code(labels).to(x.dtype)
        return out

    def all_labels(self, x: Tensor) -> Tensor:
        c = self.num_classes
        out = x.unsqueeze(0).repeat(c, 1, 1)
        out[:, :, :c] = (torch.eye(c, dtype=x.dtype, device=x.device) * self.scale).unsqueeze(1)
        return out

    def neutral(self, x: Tensor) -> Tensor:
        out = x.clone()
        out[:, : self.num_classes] = self.scale / self.num_classes
        return out


def build_embedding(kind: str, num_classes: int, bits: int, density: float, seed: int, scale: float):
    """Embedding from config fields; ``kind`` is ``pattern`` or ``onehot``."""
    if kind == "pattern":
        return PatternEmbedding(num_classes, bits, density, seed, scale)
    if kind == "onehot":
        return OneHotOverlay(num_classes, scale)
    raise ValueError(f"unknown label embedding {kind!r}; choose 'pattern' or 'onehot'")
