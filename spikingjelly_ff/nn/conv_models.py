"""Analog convolutional FF network (``AnalogConvFFNet``), trained layer-locally.

The candidate label is written into the image as Hinton does: the network's
:class:`LabelEmbedding` (kind ``onehot``) overwrites the first C pixels of the flattened
image, i.e. the start of the first row, with ``scale * onehot(label)``; the embedded image is
reshaped to ``[N, 1, H, W]``. Each layer is an :class:`FFConv2d`: activity
l = ReLU(W * x_hat + code @ B) ``[N, C, OH, OW]``, where x_hat is the previous layer's (pooled)
output, length-normalised over the goodness region for every layer after the first, and B
``[C_labels, C, OH, OW]`` the layer's label weights (one per unit and label, read from the
code in the label pixels): without them the label reached only the first row's receptive
fields, or, as constant label maps, one term per channel, and the net stayed near chance
(26 % after 4 epochs on the mini set; 88 % after 3 with them). Goodness is
taken over the whole map, at each location or over channel groups (``over``: "map",
"location" or "group:K", ``functional.conv``); a layer's score
is its summed log-odds over its goodness entries, a label's score the sum over the voting
layers (``functional.conv.conv_summed_score``). All labels are scored in batched passes
of at most ``score_inputs`` inputs (``C`` per image; one per image for a competitive net).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from spikingjelly_ff.functional.conv import (
    CPU_CONV_PASS,
    conv_goodness,
    conv_layer_score,
    conv_output_size,
    conv_summed_score,
    entry_units,
    goodness_groups,
    normalize_region,
)
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.scores import class_margin
from spikingjelly_ff.nn.conv import FFConv2d
from spikingjelly_ff.nn.embedding import LabelEmbedding
from spikingjelly_ff.nn.models import AnalogFFNet, FFNet

__all__ = ["AnalogConvFFNet", "ConvScores", "ConvSpec", "entry_units"]


class ConvSpec(Protocol):
    """What a conv layer's description holds (the run config's ``model.conv`` entries)."""

    channels: int
    kernel: int
    stride: int
    padding: int
    pool: str | None  # None, "max" or "avg", over pool_size windows (stride = window)
    pool_size: int


class ConvScores:
    """Shapes and scores shared by the analog and spiking conv nets: needs ``specs`` (the
    :class:`ConvSpec` list), ``in_features``, ``image_shape``, ``over``, ``probability``,
    ``goodness_kind``, ``score_kind`` and ``score_layers``. Activities are maps
    ``[N, C_l, OH_l, OW_l]`` (the layer's output before pooling, or its trace map)."""

    specs: list
    in_features: int
    image_shape: tuple[int, int] | None
    over: str
    probability: Probability
    goodness_kind: str
    score_kind: str
    score_layers: list[int]
    class_groups = True  # conv layers: the competitive probability's class groups

    def _hw(self) -> tuple[int, int]:
        if self.image_shape is not None:
            h, w = self.image_shape
        else:
            h = w = int(round(self.in_features**0.5))
        if h * w != self.in_features:
            raise ValueError(f"image shape {(h, w)} does not hold the {self.in_features} inputs; set image_shape")
        return int(h), int(w)

    def map_shapes(self) -> list[tuple[int, int, int]]:
        """Activity shape ``(C, OH, OW)`` of every layer (before its pooling)."""
        h, w = self._hw()
        out = []
        for spec in self.specs:
            h, w = (conv_output_size(s, spec.kernel, spec.stride, spec.padding) for s in (h, w))
            if h < 1 or w < 1:
                raise ValueError(f"conv layer {len(out)} leaves no output ({h} x {w}); use smaller kernels or pools")
            out.append((spec.channels, h, w))
            if spec.pool is not None:
                h, w = h // spec.pool_size, w // spec.pool_size
        return out

    def layer_goodness(self, activity: Tensor):
        """G (or (G+, G-)) of one layer's map ``[N, C, OH, OW]``: ``[N]``, ``[N, OH, OW]`` or
        ``[N, K]`` (``over`` "map", "location", "group:K")."""
        return conv_goodness(activity, self.goodness_kind, split=self.probability.split, over=self.over)

    def _check_competitive(self, num_classes: int) -> None:
        """A competitive net needs one goodness entry per class: ``over == "group:C"``."""
        if self.competitive and self.over != f"group:{num_classes}":
            raise ValueError(
                f"competitive probability scores one channel group per class: set goodness_over='group:{num_classes}'"
                f", got {self.over!r}"
            )

    def layer_loss(self, activity: Tensor, y: Tensor) -> Tensor:
        """The layer's FF loss: mean BCE over its goodness entries, targets ``y`` ``[N]``
        repeated over the locations or groups (competitive: the cross-entropy of the class
        goodnesses against class labels ``y``)."""
        g = self.layer_goodness(activity)
        if self.competitive:
            return self.probability.loss(g, y)
        g1 = g[0] if isinstance(g, tuple) else g
        return self.probability.loss(g, y.reshape(-1, *([1] * (g1.ndim - 1))).expand_as(g1))

    def _layer(self, activity: Tensor, score: str) -> Tensor:
        # one score per goodness entry; the sample's is their sum (over its locations or groups)
        return conv_layer_score(activity, self.probability, self.goodness_kind, score, self.over)

    def _summed(self, activities: list[Tensor], score: str) -> Tensor:
        return conv_summed_score(activities, self.score_layers, self.probability, self.goodness_kind, score, self.over)

    def layer_score(self, activity: Tensor) -> Tensor:
        """Score ``[N]`` of one layer's map: its goodness entries' scores summed."""
        return self._layer(activity, self.score_kind)

    def score_activities(self, activities: list[Tensor]) -> Tensor:
        """Sum of the voting layers' scores, ``[N]`` (competitive: every class's, ``[N, C]``)."""
        return self._summed(activities, self.score_kind)

    def pn_logit(self, activities: list[Tensor]) -> Tensor:
        """Summed log-odds that each sample is positive, ``[N]``."""
        if self.competitive:
            raise TypeError("a competitive net judges classes, not positive samples: use score_activities")
        return self._summed(activities, "probability")

    def judged(self, activities: list[Tensor], y: Tensor) -> Tensor:
        """Whether training judged each sample right, ``[N]`` bool: judged positive (``y`` 1/0
        targets, compared by the caller), or, competitive, the class ``y`` scored highest (the
        caller's targets are then all 1)."""
        if self.competitive:
            return class_margin(self.score_activities(activities), y) > 0
        return self.pn_logit(activities) > 0


class AnalogConvFFNet(ConvScores, AnalogFFNet):
    """Stack of :class:`FFConv2d` layers on images ``[N, H * W]`` (flat, as every FF net takes
    them; ``image_shape`` gives ``(H, W)``, or a square is assumed).

    An :class:`AnalogFFNet` to the trainer and the evaluator (``scores``, ``view_scores``,
    ``predict``, ``pn_logit``); activities are maps ``[N, C_l, OH_l, OW_l]`` (before pooling),
    and ``widths`` the channels. No linear readout.
    """

    kind = "analog"

    def __init__(
        self,
        in_features: int,
        conv: list[ConvSpec],
        embedding: LabelEmbedding,
        probability: Probability,
        goodness_kind: str = "sum_squares",
        score: str = "probability",
        score_layers: list[int] | None = None,
        num_classes: int = 10,
        *,
        over: str = "map",
        bias: bool = False,
        shift_views: int = 0,
        image_shape: tuple[int, int] | None = None,
        label_maps: bool = True,
        score_inputs: int | None = None,
    ) -> None:
        """``score_inputs``: inputs per batched scoring pass (default: :meth:`pass_inputs`)."""
        goodness_groups(over, [c.channels for c in conv], probability.split)  # a clear error here
        if embedding.kind != "onehot" and not probability.competitive:
            kind = embedding.kind
            raise ValueError(f"a conv FF net writes the label into the image: use a onehot embedding, got {kind!r}")
        if not conv:
            raise ValueError("a conv FF net needs at least one conv layer")
        # FFNet, not AnalogFFNet: the layers are convolutions, built here.
        FFNet.__init__(
            self, in_features, [c.channels for c in conv], embedding, probability, goodness_kind, score,
            score_layers, num_classes,
        )  # fmt: skip
        self.shift_views = shift_views
        self.normalize = True
        self.over = over
        self._check_competitive(num_classes)
        self.score_inputs = score_inputs
        self.image_shape = image_shape
        label_maps = label_maps and not probability.competitive  # a competitive net sees no label
        self.label_maps = label_maps
        self.specs = list(conv)
        shapes = [m[1:] for m in self.map_shapes()]
        chans = [1, *self.widths]
        region = normalize_region(over, probability)
        self.layers = nn.ModuleList(
            FFConv2d(
                chans[i], spec.channels, spec.kernel, stride=spec.stride, padding=spec.padding, bias=bias,
                normalize_input=region if i > 0 else None, pool=spec.pool, pool_size=spec.pool_size,
                label_maps=(num_classes, *shapes[i]) if label_maps else None,
            )
            for i, spec in enumerate(conv)
        )  # fmt: skip

    def label_code(self, x: Tensor) -> Tensor | None:
        """The label code read back from the label pixels of embedded inputs ``[N, H * W]``,
        ``[N, C]``: with ``label_maps`` every layer adds ``code @ B`` to its pre-activation,
        so every unit of every layer sees the label, not only the first row's receptive
        fields. None for a competitive net (plain images, no label)."""
        if self.competitive:
            return None
        return x[:, self.embedding.label_slice(self.in_features)]

    # -- activity, goodness, loss ----------------------------------------------------------

    def activities(self, x: Tensor, detach: bool = False) -> list[Tensor]:
        """Every layer's activity ``[N, C_l, OH_l, OW_l]`` for embedded inputs ``[N, H * W]``
        (the image, label pixels included). ``detach``: each layer reads the previous one's
        pooled output detached, so a layer-local loss trains that layer alone."""
        code = self.label_code(x)
        inp = x.reshape(x.shape[0], 1, *self._hw())
        out = []
        for layer in self.layers:
            act = layer.activity(inp.detach() if detach else inp, code)
            out.append(act)
            inp = layer.pool(act)
        return out

    # -- all-label scoring ----------------------------------------------------------------

    def all_label_activities(self, x: Tensor) -> list[Tensor]:
        """Every layer's activity for images ``[N, H * W]`` under every label, label-major
        ``[C * N, ...]`` (the label pixels feed the first conv, so there is no image/label
        separation to exploit as in the dense net)."""
        c, n = self.num_classes, x.shape[0]
        return self.activities(self.embedding.all_labels(x).reshape(c * n, -1))

    def pass_inputs(self, device: torch.device) -> int:
        """Inputs per scoring pass: ``score_inputs``, else ``functional.conv.CPU_CONV_PASS``
        on the CPU and 2000 elsewhere (not measured off the CPU). The scores do not depend on
        it."""
        if self.score_inputs is not None:
            if self.score_inputs < 1:
                raise ValueError(f"score_inputs must be at least 1, got {self.score_inputs}")
            return self.score_inputs
        return CPU_CONV_PASS if device.type == "cpu" else 2000

    def scores(self, x: Tensor) -> Tensor:
        """Score of every label, ``[N, C]``: batched passes of at most :meth:`pass_inputs`
        inputs (``C`` per image, the image under every label; a competitive net scores every
        class from the image alone)."""
        c = self.num_classes
        inputs = self.pass_inputs(x.device)
        if self.competitive:  # one pass scores every class
            parts = [self.score_activities(self.activities(xb)) for xb in torch.split(x, inputs)]
            return torch.cat(parts) if parts else x.new_zeros((0, c))
        parts = []
        for xb in torch.split(x, max(1, inputs // c)):
            s = self.score_activities(self.all_label_activities(xb))
            parts.append(s.reshape(c, xb.shape[0]).transpose(0, 1))
        return torch.cat(parts) if parts else x.new_zeros((0, c))

    def latent(self, activities: list[Tensor], layers: list[int] | None = None) -> Tensor:
        raise NotImplementedError("an analog conv FF net has no linear readout")

    def attach_readout(self, layers: list[int], grid: int | None = None) -> nn.Linear:
        raise NotImplementedError("an analog conv FF net has no linear readout")
