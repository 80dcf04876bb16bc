"""FF networks: analog (``AnalogFFNet``) and spiking (``SpikingFFNet``).

A network embeds a candidate label into the input, computes every layer's activity and
turns each layer's goodness into a score; the predicted class is the label with the
highest score summed over the voting layers (``scores.summed_score``). ``scores`` runs
all labels in one batched pass. The networks take parameters (``params.py``); building one
from a run configuration is ``build.build_model``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikingjelly_ff.functional.goodness import goodness
from spikingjelly_ff.functional.labels import spike_rates
from spikingjelly_ff.functional.params import EncoderParams, NeuronParams, TraceParams
from spikingjelly_ff.functional.probability import Probability
from spikingjelly_ff.functional.scores import layer_score, summed_score
from spikingjelly_ff.functional.views import translate, view_offsets
from spikingjelly_ff.nn.embedding import LabelEmbedding
from spikingjelly_ff.nn.layers import FFLinear, SpikingFFLayer

__all__ = ["AnalogFFNet", "EncoderParams", "FFNet", "SpikingFFNet", "bernoulli_spikes"]


class FFNet(nn.Module):
    """What analog and spiking FF networks share: label embedding, goodness, scoring.

    Subclasses take these arguments as given here (positional or keyword), then their own
    as keywords."""

    def __init__(
        self,
        in_features: int,
        widths: list[int],
        embedding: LabelEmbedding,
        probability: Probability,
        goodness_kind: str = "sum_squares",
        score: str = "probability",
        score_layers: list[int] | None = None,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if probability.competitive and not self.class_groups:
            raise ValueError(
                "competitive probability scores one channel group per class: it needs a conv net "
                f"(model.conv), not {type(self).__name__}"
            )
        self.in_features = in_features
        self.widths = list(widths)
        self.embedding = embedding
        self.probability = probability
        self.goodness_kind = goodness_kind
        self.score_kind = score
        self.score_layers = list(range(len(widths))) if score_layers is None else list(score_layers)
        self.num_classes = num_classes
        self.readout: nn.Linear | None = None
        self.readout_layers: list[int] = []
        self.image_shape: tuple[int, int] | None = None  # (H, W) of the images, where known

    #: whether the net's layers can hold one channel group per class (conv nets), which the
    #: competitive probability needs
    class_groups = False

    @property
    def competitive(self) -> bool:
        """Channel-wise competitive FF: one channel group per class, no label input, class
        labels as targets and one scoring pass (``functional.probability``)."""
        return self.probability.competitive

    @property
    def input_width(self) -> int:
        """Width of the embedded input (image + label code)."""
        return self.embedding.out_features(self.in_features)

    def layer_goodness(self, activity: Tensor):
        """G (or (G+, G-)) of one layer's activity ``[N, H]``."""
        return goodness(activity, self.goodness_kind, split=self.probability.split)

    def layer_score(self, activity: Tensor) -> Tensor:
        """Per-sample score ``[N]`` of one layer: log-odds of P, or the goodness."""
        return layer_score(activity, self.probability, self.goodness_kind, self.score_kind)

    def score_activities(self, activities: list[Tensor]) -> Tensor:
        """Sum of the voting layers' scores, ``[N]``."""
        return summed_score(activities, self.score_layers, self.probability, self.goodness_kind, self.score_kind)

    def pn_logit(self, activities: list[Tensor]) -> Tensor:
        """Summed log-odds that each sample is positive, ``[N]`` (> 0 means P > 1/2)."""
        return summed_score(activities, self.score_layers, self.probability, self.goodness_kind)

    def judged(self, activities: list[Tensor], y: Tensor) -> Tensor:
        """Whether training judged each sample right, ``[N]`` bool: here, judged positive
        (compared with the 1/0 targets ``y`` by the caller)."""
        return self.pn_logit(activities) > 0

    def latent(self, activities: list[Tensor], layers: list[int] | None = None) -> Tensor:
        """Concatenated activity of ``layers`` (default all), ``[N, sum H]``."""
        idx = range(len(activities)) if layers is None else layers
        return torch.cat([activities[i] for i in idx], dim=-1)

    def readout_logits(self, activities: list[Tensor]) -> Tensor:
        if self.readout is None:
            raise RuntimeError("this model has no trained readout")
        return self.readout(self.latent(activities, self.readout_layers))

    def attach_readout(self, layers: list[int], grid: int | None = None) -> nn.Linear:
        """A fresh readout on the concatenated activity of ``layers`` (``grid``: conv nets only)."""
        width = sum(self.widths[i] for i in layers)
        self.readout = nn.Linear(width, self.num_classes)
        self.readout_layers = list(layers)
        return self.readout


class AnalogFFNet(FFNet):
    """Stack of :class:`FFLinear` layers trained layer-locally."""

    kind = "analog"

    def __init__(self, *args, bias: bool = False, normalize: bool = True, shift_views: int = 0, **kwargs) -> None:
        """``args``, ``kwargs``: those of :class:`FFNet`. ``normalize`` length-normalises the
        input of every layer after the first."""
        super().__init__(*args, **kwargs)
        self.shift_views = shift_views  # classify from 4 * shift_views + 1 translated views
        dims = [self.input_width, *self.widths]
        self.layers = nn.ModuleList(
            FFLinear(dims[i], dims[i + 1], bias=bias, normalize_input=normalize and i > 0) for i in range(len(dims) - 1)
        )
        self.normalize = normalize

    def activities(self, x: Tensor) -> list[Tensor]:
        """Every layer's activity for embedded inputs ``[N, D']``, each ``[N, H_l]``."""
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Last layer's activity for embedded inputs ``[N, D']`` (or ``[T, N, D']``)."""
        return self.activities(x)[-1]

    def label_activities(self, x: Tensor, labels: Tensor) -> list[Tensor]:
        return self.activities(self.embedding(x, labels))

    def all_label_activities(self, x: Tensor) -> list[Tensor]:
        """Every layer's activity for images ``[N, D]`` under every label, each ``[C * N, H_l]``
        (label-major). The first layer's input current is label-separable,
        W x' = W_img x_img + W_lab code_c, so the image term is computed once per image.

        That current is accumulated in float64 and rounded once: trained weights are large
        and a unit near zero is a difference of large terms, whose float32 rounding depends
        on the summation order of the matmul kernel. Rounded once, any two runtimes (torch,
        the ONNX export in onnxruntime) agree to the last bit or two."""
        c, n = self.num_classes, x.shape[0]
        first = self.layers[0]
        if first.normalize_input:  # the norm mixes image and label: no separation
            return self.activities(self.embedding.all_labels(x).reshape(c * n, -1))
        w = first.weight.double()
        img = self.embedding.image_slice(self.in_features)
        lab = self.embedding.label_slice(self.in_features)
        codes = self.embedding.code(torch.arange(c, device=x.device)).double()  # [C, L]
        label_term = codes @ w[:, lab].T  # [C, H]
        if first.synapse.bias is not None:
            label_term = label_term + first.synapse.bias.double()
        z = (x[:, img].double() @ w[:, img].T).unsqueeze(0) + label_term.unsqueeze(1)  # [C, N, H]
        a = first.act(z.to(x.dtype)).reshape(c * n, -1)
        out = [a]
        for layer in self.layers[1:]:
            a = layer(a)
            out.append(a)
        return out

    def scores(self, x: Tensor) -> Tensor:
        """Score of every label, ``[N, C]``, from one batched pass over ``C * N`` inputs."""
        c, n = self.num_classes, x.shape[0]
        return self.score_activities(self.all_label_activities(x)).reshape(c, n).transpose(0, 1)

    def view_scores(self, x: Tensor) -> Tensor:
        """Classification scores ``[N, C]``: :meth:`scores` summed over the image and its
        translated copies (``functional.views.view_offsets(shift_views)``); the image alone when
        ``shift_views`` is 0."""
        if not self.shift_views:
            return self.scores(x)
        if self.image_shape is None or self.image_shape[0] * self.image_shape[1] != self.in_features:
            raise RuntimeError(f"shift_views needs the image shape of the {self.in_features} inputs")
        offsets = view_offsets(self.shift_views)
        views = torch.cat([translate(x, self.image_shape, dy, dx) for dy, dx in offsets])
        return self.scores(views).reshape(len(offsets), x.shape[0], -1).sum(0)

    def predict(self, x: Tensor, use_readout: bool | None = None) -> Tensor:
        """Predicted class ``[N]``; with a readout, from the neutral-label latent."""
        if use_readout is None:
            use_readout = self.readout is not None
        if use_readout:
            return self.readout_logits(self.activities(self.embedding.neutral(x))).argmax(-1)
        return self.view_scores(x).argmax(-1)


class SpikingFFNet(FFNet):
    """Stack of :class:`SpikingFFLayer` fed with Bernoulli rate-coded inputs.

    One *presentation* shows an embedded input for ``steps`` steps, reads every layer's
    trace as its activity, then lets the membranes rest ``rest_steps`` steps (or resets
    them when ``carry_membrane`` is false).
    """

    kind = "spiking"

    def __init__(
        self,
        *args,
        neuron: NeuronParams,
        trace: TraceParams,
        encoder: EncoderParams,
        backend: str = "torch",
        **kwargs,
    ) -> None:
        """``args``, ``kwargs``: those of :class:`FFNet`."""
        super().__init__(*args, **kwargs)
        dims = [self.input_width, *self.widths]
        self.layers = nn.ModuleList(
            SpikingFFLayer(dims[i], dims[i + 1], neuron, trace, backend=backend, step_mode="m")
            for i in range(len(dims) - 1)
        )
        self.neuron_params = neuron
        self.trace_params = trace
        self.encoder = encoder
        self.backend = backend

    @property
    def dynamics(self):
        """Neuron, trace, probability and goodness as one :class:`~spikingjelly_ff.simulation.Dynamics`."""
        from spikingjelly_ff.simulation import Dynamics

        return Dynamics(self.neuron_params, self.trace_params, self.probability, self.goodness_kind)

    def set_backend(self, backend: str) -> None:
        self.backend = backend
        for layer in self.layers:
            layer.neuron.backend = backend

    def rates(self, x: Tensor, labels: Tensor) -> Tensor:
        """Spike probabilities ``[N, D']`` of images ``[N, D]`` with ``labels``."""
        return spike_rates(self.embedding(x, labels), self.encoder.gain)

    def encode(self, rates: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Input spikes ``[T, N, D']`` with per-step rate ``rates`` ``[N, D']`` (the encoder's coding)."""
        from spikingjelly_ff.simulation import encode_spikes

        return encode_spikes(rates, self.encoder.steps, generator, self.encoder.coding)

    def forward(self, spikes: Tensor) -> Tensor:
        """Output spikes of the last layer for input spikes ``[T, N, D']``."""
        for layer in self.layers:
            spikes = layer(spikes)
        return spikes

    def begin_presentation(self, batch: int) -> None:
        """Clear traces; keep (carry) or zero the membranes; start over if the batch changed."""
        for layer in self.layers:
            node = layer.neuron
            v = node.v
            if not self.encoder.carry_membrane or not isinstance(v, Tensor) or v.shape[0] != batch:
                node.v = 0.0
            node.clear_trace()

    def end_presentation(self) -> None:
        """Rest steps: membranes decay with no input."""
        if self.encoder.carry_membrane:
            for layer in self.layers:
                layer.neuron.rest(self.encoder.rest_steps)

    @torch.no_grad()
    def present(self, spikes: Tensor) -> list[Tensor]:
        """One presentation of input spikes ``[T, N, D']``; returns each layer's trace ``[N, H]``."""
        self.begin_presentation(spikes.shape[1])
        self(spikes)
        activities = [layer.activity.clone() for layer in self.layers]
        self.end_presentation()
        return activities

    def state(self) -> list[Tensor | None]:
        """Membrane of each layer (``None`` where not yet materialised)."""
        return [layer.neuron.v if isinstance(layer.neuron.v, Tensor) else None for layer in self.layers]


def bernoulli_spikes(rates: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
    """``[steps, *rates.shape]`` float spikes, each 1 with probability ``rates`` (see
    :func:`spikingjelly_ff.simulation.bernoulli_spikes`)."""
    from spikingjelly_ff.simulation import bernoulli_spikes as draw

    return draw(rates, steps, generator)
