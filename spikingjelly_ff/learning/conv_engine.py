"""Training and all-label scoring of a :class:`SpikingConvFFNet`: a thin torch wrapper around
``simulation.conv`` (the presentation, the Hebbian conv rule and the scoring loop, shared with
the numpy runtime ``runtime.conv_model``). Here: the torch random draws of the spikes, the
learning-rate schedule, and the net's parameters and scores.

One presentation shows image spikes ``[T, N, 1, H, W]`` and label spikes ``[T, N, L]`` for
``T = encoder.steps`` steps, from rest; see :func:`~spikingjelly_ff.simulation.run_conv_layer`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from spikingjelly_ff.functional.labels import spike_rates
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.functional.readout import map_latent
from spikingjelly_ff.functional.schedule import schedule_factor
from spikingjelly_ff.functional.views import translate, view_offsets
from spikingjelly_ff.nn.spiking_conv import SpikingConvFFNet
from spikingjelly_ff.simulation import ConvLayout, encode_spikes, present_conv, score_conv_labels
from spikingjelly_ff.simulation.conv import SCORE_CHUNK

__all__ = ["SpikingConvScorer", "SpikingConvTrainer", "conv_layouts"]


def conv_layouts(net: SpikingConvFFNet) -> list[ConvLayout]:
    """Stride, padding and pooling of every layer, from the net's conv specs."""
    return [ConvLayout(s.stride, s.padding, s.pool, s.pool_size) for s in net.specs]


def _arrays(net: SpikingConvFFNet) -> tuple[list[Tensor], list[Tensor]]:
    """The conv weights and label weights as plain tensors (learning updates them in place)."""
    return [la.weight.data for la in net.layers], [la.label_bias.data for la in net.layers]


class SpikingConvTrainer:
    """Hebbian training of a :class:`SpikingConvFFNet`, one batch (``N >= 1``) at a time; the
    eligibility traces of W and B outlive batches (the paper's running update).

    With an ``optimizer`` over the net's parameters (and ``hebbian.update == "presentation"``)
    the deltas are not applied with eta: -dW/K, the Hebbian delta of the K window steps summed
    over the steps and averaged over the batch's images, i.e. the mean per image and window
    step, is written into each weight's ``.grad`` and the optimizer steps; ``lr_at(progress)``
    sets its learning rate before each step. (SpikingJelly's learners and our
    ``HebbianLearner.step`` write the summed -dW: with SGD, lr here is eta per step there.)
    Still no autograd: the gradients are the Hebbian products."""

    def __init__(
        self,
        net: SpikingConvFFNet,
        hebbian: HebbianParams,
        steps_total: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
        optimizer: torch.optim.Optimizer | None = None,
        lr_at: Callable[[float], float] | None = None,
    ) -> None:
        if optimizer is not None and hebbian.update != "presentation":
            raise ValueError('an optimizer steps once per presentation: set the Hebbian update to "presentation"')
        self.net = net
        self.hebbian = hebbian
        self.steps_total = max(1, steps_total)
        self.count = 0
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.eligibility = [(torch.zeros_like(la.weight), torch.zeros_like(la.label_bias)) for la in net.layers]
        self.optimizer = optimizer
        self.lr_at = lr_at

    def state_dict(self) -> dict:
        """What training goes on from besides the weights: the step count, the spike draws'
        stream, the eligibility traces and the optimizer's state."""
        return {
            "count": self.count,
            "generator": self.generator.get_state(),
            "eligibility": [(ew.clone(), eb.clone()) for ew, eb in self.eligibility],
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`."""
        self.count = int(state["count"])
        self.generator.set_state(state["generator"])
        for (ew, eb), (sw, sb) in zip(self.eligibility, state["eligibility"], strict=True):
            ew.copy_(sw)
            eb.copy_(sb)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def draw(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Image spikes ``[T, N, 1, H, W]`` and label spikes ``[T, N, L]``."""
        net = self.net
        steps, coding = net.encoder.steps, net.encoder.coding
        image = encode_spikes(net.image_rates(x), steps, self.generator, coding)
        if net.competitive:
            return image, net.no_label_spikes(image)
        return image, encode_spikes(net.label_rates(labels), steps, self.generator, coding)

    @torch.no_grad()
    def train_batch(self, x: Tensor, shown: Tensor, y: Tensor, spikes: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Present images ``x`` ``[N, D]`` with labels ``shown`` and learn towards ``y`` (1
        positive, 0 negative); ``spikes`` (image, label) overrides the draw. Returns whether
        each sample was judged positive at the end of its presentation, ``[N]``. A
        competitive net sees no label and learns towards the class ``shown``; it returns
        whether that class scored highest."""
        net = self.net
        progress = self.count / self.steps_total
        eta = self.hebbian.eta * schedule_factor(self.hebbian.schedule, progress)
        self.count += 1
        pre, code = self.draw(x, shown) if spikes is None else spikes
        window = pre.shape[0] - self.hebbian.learn_after - 1
        if window < 1:  # training that never learns is a mistake, not a no-op
            raise ValueError(
                f"the learning window (steps t > learn_after={self.hebbian.learn_after}) is empty for "
                f"{pre.shape[0]} steps: set learn_after < {pre.shape[0] - 1}"
            )
        target = shown if net.competitive else y.to(pre.dtype)
        learns = [(target, self.hebbian, eta, e_w, e_b) for e_w, e_b in self.eligibility]
        w, b = _arrays(net)
        deltas: list[tuple[Tensor, Tensor]] | None = None if self.optimizer is None else []
        acts = present_conv(pre, code, w, b, conv_layouts(net), net.dynamics, net.over, net.backend, learns,
                            deltas=deltas)  # fmt: skip
        if deltas:
            self._optimizer_step(deltas, progress, window)
        return net.judged(acts, target)

    def _optimizer_step(self, deltas: list[tuple[Tensor, Tensor]], progress: float, window: int) -> None:
        """-dW per window step into ``.grad`` of every layer's weights, then one optimizer step."""
        for layer, (dw, db) in zip(self.net.layers, deltas):
            layer.weight.grad = -dw / window
            layer.label_bias.grad = -db / window
        if self.lr_at is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(progress)
        self.optimizer.step()


class SpikingConvScorer:
    """Scores every candidate label of images with a :class:`SpikingConvFFNet`: one draw of
    image spikes per image serves every label (so the first layer's conv current is computed
    once), and all labels' label bits use the same uniform draws (common random numbers),
    shared by the images of a chunk. Scores are summed over ``repeats`` presentations, and over
    the net's ``shift_views`` translated views."""

    chunk = SCORE_CHUNK  # images per internal batch (and label draw), as the numpy runtime's

    def __init__(
        self,
        net: SpikingConvFFNet,
        seed: int = 0,
        device="cpu",
        repeats: int = 1,
        views: bool = True,
        readout: bool = False,
    ) -> None:
        """``views``: sum the net's shifted views (False: the image alone, as training's hard
        negatives are mined). ``readout``: the scores are the net's readout logits (a
        competitive net with a readout), not its goodness scores."""
        if readout and net.readout is None:
            raise ValueError("this model has no trained readout")
        self.net = net
        self.repeats = repeats
        self.views = views
        self.readout = readout
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def scores(self, x: Tensor) -> Tensor:
        """Score of every label, ``[N, C]``; with the net's ``shift_views``, summed over the
        views of each chunk of images in ``view_offsets`` order."""
        shape, offsets = self.net._hw(), view_offsets(self.net.shift_views if self.views else 0)
        parts = []
        for xb in torch.split(x, self.chunk):
            total = self._scores(xb)
            for dy, dx in offsets[1:]:
                total += self._scores(translate(xb, shape, dy, dx))
            parts.append(total)
        return torch.cat(parts) if parts else x.new_zeros((0, self.net.num_classes))

    def predict(self, x: Tensor) -> Tensor:
        return self.scores(x).argmax(1)

    @torch.no_grad()
    def latent(self, x: Tensor, layers: list[int], grid: int) -> Tensor:
        """The readout's input for images ``[N, D]`` alone (one presentation each, no views),
        ``[N, F]``: a competitive net's trace maps of ``layers`` averaged on a ``grid``."""
        net = self.net
        parts = []
        for xb in torch.split(x, self.chunk):
            image = encode_spikes(net.image_rates(xb), net.encoder.steps, self.generator, net.encoder.coding)
            parts.append(map_latent(self._present_alone(image), layers, grid))
        return torch.cat(parts)

    def _present_alone(self, image: Tensor) -> list[Tensor]:
        """A competitive net's trace maps for image spikes ``[T, N, 1, H, W]`` (no label)."""
        net = self.net
        w, b = _arrays(net)
        return present_conv(image, net.no_label_spikes(image), w, b, conv_layouts(net), net.dynamics, net.over,
                            net.backend)  # fmt: skip

    def _scores(self, x: Tensor) -> Tensor:
        net = self.net
        steps = net.encoder.steps
        total = x.new_zeros(x.shape[0], net.num_classes)
        # the label codes' spike rates [C, L]; a competitive net has none
        rates = None if net.competitive else spike_rates(net.embedding.codes.to(x.dtype), net.encoder.gain)
        w, b = _arrays(net)
        layouts = conv_layouts(net)
        for _ in range(self.repeats):
            image = encode_spikes(net.image_rates(x), steps, self.generator, net.encoder.coding)
            if net.competitive:  # no label: one presentation scores every class
                acts = self._present_alone(image)
                total += net.readout_logits(acts) if self.readout else net.score_activities(acts)
                continue
            # one label draw per chunk, shared by its images: the label current [T, 1, U] is
            # then computed once per label and broadcast over the images
            if net.encoder.coding == "bernoulli":
                uniform = torch.rand(steps, 1, rates.shape[1], generator=self.generator, device=x.device)
                codes = [(uniform < rates[k]).to(x.dtype) for k in range(net.num_classes)]
            else:
                codes = [encode_spikes(rates[k : k + 1], steps, self.generator, net.encoder.coding) for k in
                         range(net.num_classes)]  # fmt: skip
            total += score_conv_labels(
                image, codes, w, b, layouts, net.dynamics, net.score_activities, net.over, net.backend
            )
        return total
