"""Fast training and scoring of a :class:`SpikingFFNet` (torch side of ``simulate.py``).

``SpikingTrainer.train_batch`` gives the same spikes and weights as stepping the module
graph with one ``HebbianLearner`` per layer (``reference.py``) and ``SpikingScorer`` the
same scores as presenting every label through it; ``simulate.py`` explains the speed-ups.
Batch-1 training on the CPU runs the numpy ``online_layer`` on the weights' memory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from spikingjelly_ff import kernels
from spikingjelly_ff.functional.hebbian import DeltaReduce
from spikingjelly_ff.functional.params import HebbianParams
from spikingjelly_ff.functional.schedule import schedule_factor
from spikingjelly_ff.kernels import numba_online, numba_rows, numba_spikes
from spikingjelly_ff.learning.ahead import DrawAhead
from spikingjelly_ff.nn.models import SpikingFFNet
from spikingjelly_ff.simulation import (
    SampleDraws,
    SpikeIndex,
    batch_compiles,
    bernoulli_draws,
    draws_at,
    encode_spikes,
    input_major,
    label_currents,
    label_spikes,
    learns_online,
    online_layer,
    run_layer,
    scalar_logit,
    score_labels,
    score_labels_present,
    spike_currents,
)

__all__ = ["SpikingScorer", "SpikingTrainer"]


def _membrane(node, n: int, h: int, like: Tensor, carry: bool) -> Tensor:
    v = node.v
    if carry and isinstance(v, Tensor) and tuple(v.shape) == (n, h):
        return v.clone().contiguous()
    return torch.zeros(n, h, dtype=like.dtype, device=like.device)


def _torch_matmul(a, b):
    """numpy in, numpy out, torch's BLAS in between (no copies)."""
    return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _carried(neuron) -> tuple:
    """A neuron's membrane and trace as they stand (a float before the first step), copied."""
    return tuple(x.clone() if isinstance(x, Tensor) else x for x in (neuron.v, neuron.trace))


class SpikingTrainer:
    """Hebbian training of a :class:`SpikingFFNet`, one batch (``N >= 1``) at a time."""

    def __init__(
        self,
        net: SpikingFFNet,
        hebbian: HebbianParams,
        steps_total: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
        sequential: bool = False,
        reduce: DeltaReduce | None = None,
    ) -> None:
        """``reduce`` (data parallel: every batch is one rank's shard) combines each learning
        step's delta across ranks (``run_layer``); batches then always take the batched path."""
        if reduce is not None and sequential:
            raise ValueError("online (sequential) learning cannot be split across ranks")
        hebbian.require_step("a dense spiking net")
        self.net = net
        self.reduce = reduce
        self.hebbian = hebbian
        # Online learning: a batch of rows (e.g. a positive and a negative) is shown one row
        # after another, each followed by its own update.
        self.sequential = sequential
        self.steps_total = max(1, steps_total)
        self.count = 0
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.eligibility = [input_major(torch.zeros_like(layer.weight)) for layer in net.layers]
        self._rng: np.random.Generator | None = None  # numpy stream of the online path, seeded from ours
        self._code: tuple | None = None  # the online path's label layout (see _layout)
        self._views: tuple | None = None  # (memory pointers, [(W, e) numpy views]) of the online path
        self._plan: tuple | None = None  # see _online_plan
        self._ahead = DrawAhead(self.generator, self._draw)  # see prefetch

    def prefetch(self, x: Tensor, shown: Tensor) -> bool:
        """Announce a batch (images ``[N, D]``, labels ``[N]``) that a later :meth:`train_batch`
        gets, in the order they come: its input spikes are drawn on a worker thread while the
        batches before it present (``ahead.py``). The spikes and the random stream are the same
        as without; a batch that comes otherwise is drawn when it comes (and those announced after
        it again). Until then :attr:`generator` belongs to the worker: read or seed it through
        :meth:`state_dict` / :meth:`load_state_dict`. Returns whether it draws ahead: batched
        training on the CPU through the compiled kernel, the one that lets the worker run."""
        net = self.net
        if x.device.type != "cpu" or (self.sequential and x.shape[0] > 1) or self._online(x.shape[0], x.device):
            return False
        if x.dtype != torch.float32 or not batch_compiles(net.dynamics, net.backend, self.reduce):
            return False
        self._ahead.submit(x, shown)
        return True

    def __getstate__(self) -> dict:
        """A copy (``copy.deepcopy``, pickling) takes the generator with no draw pending."""
        self._settled()
        return self.__dict__.copy()

    def state_dict(self) -> dict:
        """What training goes on from besides the weights: the step count, the random streams,
        the eligibility traces and each layer's carried membrane and trace."""
        return {
            "count": self.count,
            "generator": self._settled().get_state(),
            "rng": None if self._rng is None else self._rng.bit_generator.state,
            "eligibility": [e.clone() for e in self.eligibility],
            "neurons": [_carried(layer.neuron) for layer in self.net.layers],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` (the eligibility is copied into the tensors the
        online path views)."""
        self.count = int(state["count"])
        self._settled().set_state(state["generator"])
        self._rng = None
        if state["rng"] is not None:
            self._rng = np.random.default_rng()
            self._rng.bit_generator.state = state["rng"]  # numpy refuses another bit generator's state
        for e, saved in zip(self.eligibility, state["eligibility"], strict=True):
            e.copy_(saved)
        for layer, (v, trace) in zip(self.net.layers, state["neurons"], strict=True):
            dev = layer.weight.device  # the state is read onto the CPU
            layer.neuron.v, layer.neuron.trace = (x.to(dev) if isinstance(x, Tensor) else x for x in (v, trace))

    def _online(self, n: int, device: torch.device) -> bool:
        if self.reduce is not None:  # a 1-row shard is still part of a batch
            return False
        return learns_online(n, self.hebbian, self.net.neuron_params, device.type == "cpu")

    @torch.no_grad()
    def train_batch(self, x: Tensor, shown: Tensor, y: Tensor, spikes: Tensor | None = None) -> Tensor:
        """Present images ``x`` ``[N, D]`` with labels ``shown`` and learn towards targets ``y``
        (1 positive, 0 negative). ``spikes`` ``[T, N, D']`` overrides the Bernoulli draw.
        Returns whether each sample was judged positive at the end of its presentation, ``[N]``.
        A batch it cannot take raises ValueError before anything is learnt or counted."""
        self._check_batch(x, shown, y)
        eta = self.rate()
        self.count += 1
        return self._train_at(x, shown, y, eta, spikes)

    def _check_batch(self, x: Tensor, shown: Tensor, y: Tensor) -> None:
        """One ValueError for images that are not ``[N, D]`` and finite, labels that are not N of
        the net's classes, or targets that are not ``[N]``. On a GPU the values are not read:
        that would make the host wait for the device at every batch (and break a CUDA graph)."""
        d = self.net.in_features
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"images must be [N, {d}], got shape {list(x.shape)}")
        if tuple(y.shape) != (x.shape[0],):
            raise ValueError(f"targets must be [{x.shape[0]}], one per image, got shape {list(y.shape)}")
        if x.device.type != "cpu":
            return
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images hold NaN or infinite values")
        self.net.embedding.label_code.check_labels(shown.numpy(), x.shape[0])

    @torch.no_grad()
    def train_rows(self, x: Tensor, shown: Tensor, y: Tensor) -> Tensor:
        """``N`` calls of :meth:`train_batch`, one per row (``x`` ``[N, D]``, ``shown``, ``y``
        ``[N]``), in one call: where batch-1 learning runs compiled (a one-layer net on the CPU,
        Bernoulli input), every row's presentation runs in one compiled call
        (``kernels.numba_rows``) with the same spikes, weights and random streams, bit for bit.
        Returns whether each row was judged positive, ``[N]``."""
        self._check_batch(x, shown, y)  # the whole run refused before a row learns
        if not len(x):
            return torch.zeros(0, dtype=torch.bool)
        etas = np.empty(len(x))
        for i in range(len(x)):  # train_batch's schedule, row by row
            etas[i] = self.rate()
            self.count += 1
        if self._rows_fit(x):
            return self._rows(x, shown, y, etas)
        rows = range(len(x))  # one call per row, each at its rate
        return torch.cat([self._train_at(x[i : i + 1], shown[i : i + 1], y[i : i + 1], etas[i], None) for i in rows])

    def _rows(self, x: Tensor, shown: Tensor, y: Tensor, etas: np.ndarray) -> Tensor:
        """Rows ``x`` one after another at learning rates ``etas`` ``[N]``, in one compiled call."""
        self._settled()  # the online path's stream is seeded from ours
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the online path: a chain of tiny ops
        try:
            return self._learn_rows(x, shown, y, etas)
        finally:
            torch.set_num_threads(threads)

    def _rows_fit(self, x: Tensor) -> bool:
        """Whether :meth:`train_rows` runs the (checked) rows ``x`` in one ``numba_rows`` call:
        rows that would each take the compiled batch-1 presentation of a one-layer net with
        Bernoulli input."""
        net = self.net
        spec, enc = self.hebbian, net.encoder
        if len(net.layers) != 1 or x.device.type != "cpu" or x.dtype != torch.float32 or enc.coding != "bernoulli":
            return False
        w = net.layers[0].weight
        return (
            self._online(1, x.device)
            and numba_online.supported(net.dynamics.neuron, net.dynamics.goodness, np.float32)
            and w.dtype == torch.float32
            and w.T.is_contiguous()
            and self.eligibility[0].T.is_contiguous()
            and enc.steps > spec.learn_after + 1
        )

    def _learn_rows(self, x: Tensor, shown: Tensor, y: Tensor, etas: np.ndarray) -> Tensor:
        """:meth:`_rows`' work on images ``x`` ``[N, D]``, labels and targets ``[N]``: the rows'
        rates and draws, the one kernel call, the judgements ``[N]``."""
        _, gain, label_rates, image, label, width = self._layout()
        images, labels = np.ascontiguousarray(x.numpy()), shown.numpy().astype(np.int64)
        rates, live, starts = numba_rows.live_rows(images, gain, label_rates, labels, image, label, width)
        if self._rng is None:
            self._rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        steps = self.net.encoder.steps
        # one draw for every row: the same numbers as a draw per row (bernoulli_draws' order)
        u = self._rng.random(steps * len(live), dtype=np.float32)
        layers, neurons, d, enc, rest_steps, scoring = self._online_plan()
        (w, e), neuron = self._numpy_views()[0], neurons[0]
        v = _membrane(neuron, 1, w.shape[0], layers[0].weight, enc.carry_membrane)
        targets = np.asarray(y.numpy(), dtype=np.float64)
        traces = numba_rows.present_rows(
            u, rates, live, starts, steps, w.T, e.T, v.numpy().reshape(-1), d, targets, self.hebbian.learn_after + 1,
            self.hebbian.eligibility_tau, etas, rest_steps, enc.carry_membrane,
        )  # fmt: skip
        neuron.v = v
        neuron.trace = torch.from_numpy(traces[-1:].copy())
        if 0 not in scoring:
            return torch.zeros(len(x), dtype=torch.bool)
        return torch.tensor([scalar_logit(d, tr) > 0 for tr in traces])

    def rate(self) -> float:
        """The learning rate of the next batch (the schedule at this step count)."""
        return self.hebbian.eta * schedule_factor(self.hebbian.schedule, self.count / self.steps_total)

    @torch.no_grad()
    def train_batch_at(self, x: Tensor, shown: Tensor, y: Tensor, eta: float, spikes: Tensor | None = None) -> Tensor:
        """:meth:`train_batch` at learning rate ``eta``, the step count left alone: a CUDA
        graph of a batch (``runs/graphed.py``) is captured once and replayed, so its caller
        counts the replays."""
        self._check_batch(x, shown, y)
        return self._train_at(x, shown, y, eta, spikes)

    def _train_at(self, x: Tensor, shown: Tensor, y: Tensor, eta: float, spikes: Tensor | None) -> Tensor:
        if self.sequential and x.shape[0] > 1:
            if spikes is None and self._rows_fit(x):  # e.g. a positive and a negative
                return self._rows(x, shown, y, np.full(len(x), eta))
            rows = range(x.shape[0])
            return torch.cat(
                [
                    self._train(
                        x[i : i + 1],
                        shown[i : i + 1],
                        y[i : i + 1],
                        eta,
                        None if spikes is None else spikes[:, i : i + 1],
                    )
                    for i in rows
                ]
            )
        return self._train(x, shown, y, eta, spikes)

    def _settled(self) -> torch.Generator:
        """The generator with no draw pending on the worker (those made ahead are undone)."""
        self._ahead.cancel()
        return self.generator

    def _draw(self, x: Tensor, shown: Tensor) -> tuple[Tensor, Tensor | None, SpikeIndex]:
        """(rates ``[N, D']``, spikes ``[T, N, D']`` or None, their index) of a CPU batch: the
        compiled batch presentation reads the index alone, so dense spikes are made only for
        another path."""
        net = self.net
        rates = net.rates(x, shown)
        dense = rates.dtype != torch.float32 or not batch_compiles(net.dynamics, net.backend, self.reduce)
        spikes, index = encode_spikes(rates, net.encoder.steps, self.generator, net.encoder.coding, True, dense)
        return rates, spikes, index

    def _train(self, x: Tensor, shown: Tensor, y: Tensor, eta: float, spikes: Tensor | None) -> Tensor:
        if not self._online(x.shape[0], x.device):
            return self._present(x, shown, y, eta, spikes, online=False)
        self._settled()  # the online path's stream is seeded from ours
        # Batch-1 work is a chain of tiny ops: a second thread only adds synchronisation, and
        # with any other process on the machine every parallel op waits for a free core.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._present(x, shown, y, eta, spikes, online=True)
        finally:
            torch.set_num_threads(threads)

    def _present(self, x: Tensor, shown: Tensor, y: Tensor, eta: float, spikes: Tensor | None, online: bool) -> Tensor:
        if online:
            return self._present_online(x, shown, y, eta, spikes)
        net = self.net
        index = None
        like = spikes
        if spikes is None:
            if x.device.type == "cpu":
                like, spikes, index = self._ahead.get(x, shown)
            else:
                like = net.rates(x, shown)
                spikes = net.encode(like, self._settled())
        elif x.device.type == "cpu":
            index = SpikeIndex.from_dense(spikes.reshape(-1, spikes.shape[-1]))
        n = like.shape[-2]
        y = y.to(like.dtype)
        acts = []
        pre = spikes
        enc = net.encoder
        rest_steps = enc.rest_steps if enc.carry_membrane else 0  # what end_presentation() does
        for layer, e in zip(net.layers, self.eligibility):
            w = layer.weight.data
            v = _membrane(layer.neuron, n, w.shape[0], like, enc.carry_membrane)
            learn = (y, self.hebbian, eta, e)
            pre, tr = run_layer(pre, w, v, net.dynamics, net.backend, learn, index, self.reduce, rest_steps)
            index = None  # deeper layers see dense spike trains
            layer.neuron.v = v
            layer.neuron.trace = tr
            acts.append(tr)
        return net.pn_logit(acts) > 0

    def _numpy_views(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W, e) of every layer as numpy arrays on the tensors' memory, kept between samples
        and made again when a weight tensor's memory changed."""
        ptrs = [(layer.weight.data_ptr(), e.data_ptr()) for layer, e in zip(self.net.layers, self.eligibility)]
        if self._views is None or self._views[0] != ptrs:
            views = [(layer.weight.detach().numpy(), e.numpy()) for layer, e in zip(self.net.layers, self.eligibility)]
            self._views = (ptrs, views)
        return self._views[1]

    def _layout(self) -> tuple:
        """(label code, gain, label rates [C, L], image slice, label slice, width): fixed
        during training, so computed once."""
        if self._code is None:
            code, gain = self.net.embedding.label_code, self.net.encoder.gain
            d = self.net.in_features
            image, label = code.image_slice(d), code.label_slice(d)
            self._code = (code, gain, code.label_rates(gain), image, label, max(image.stop, label.stop))
        return self._code

    def _label_rates(self, shown: Tensor) -> np.ndarray:
        return self._layout()[2][int(shown[0])]  # a label _check_batch has let through

    def _rates_numpy(self, x: Tensor, shown: Tensor) -> np.ndarray:
        """Spike probabilities of one sample ``[D']``: the image's and the shown label's, put
        together as the label code lays them out."""
        code, gain, _, image, label, width = self._layout()
        rates = np.empty(width, dtype=np.float32)
        rates[image] = code.image_rates(x.numpy()[0], gain)[image]
        rates[label] = self._label_rates(shown)
        return rates

    def _draws(self, x: Tensor, shown: Tensor, compiled: bool) -> SampleDraws:
        """One sample's Bernoulli draws; the rates come from one compiled call when numba runs."""
        steps = self.net.encoder.steps
        if not compiled:
            return bernoulli_draws(self._rates_numpy(x, shown), steps, self._rng)
        _, gain, _, image, label, width = self._layout()
        rates, live = numba_spikes.live_rates(x.numpy()[0], gain, self._label_rates(shown), image, label, width)
        return draws_at(rates, live, width, steps, self._rng)

    def _online_plan(self) -> tuple:
        """(layers, their neurons, dynamics, encoder, rest steps, scoring layers) of the online
        path: fixed during training, and every module attribute costs a lookup per sample."""
        if self._plan is None:
            net = self.net
            enc = net.encoder
            layers = list(net.layers)
            rest_steps = enc.rest_steps if enc.carry_membrane else 0  # what end_presentation() does
            self._plan = (layers, [layer.neuron for layer in layers], net.dynamics, enc, rest_steps,
                          frozenset(net.score_layers))  # fmt: skip
        return self._plan

    def _present_online(self, x: Tensor, shown: Tensor, y: Tensor, eta: float, spikes: Tensor | None) -> Tensor:
        """One sample, in numpy on the tensors' memory (every op here is tiny); each layer's
        presentation, rest steps included, is one call of ``online_layer``."""
        layers, neurons, d, enc, rest_steps, scoring = self._online_plan()
        compiled = numba_online.enabled()
        if spikes is not None:
            pre = spikes.numpy()
        else:
            if self._rng is None:
                self._rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
            if enc.coding == "bernoulli":  # the draws: the compiled presentation makes the spikes
                pre = self._draws(x, shown, compiled)
            else:
                pre = encode_spikes(self._rates_numpy(x, shown)[None], enc.steps, self._rng, enc.coding)
        target = float(y[0])
        logit = 0.0
        for i, (layer, neuron, (w, e)) in enumerate(zip(layers, neurons, self._numpy_views())):
            v = _membrane(neuron, 1, w.shape[0], layer.weight, enc.carry_membrane)
            pre, tr = online_layer(
                pre, w, v.numpy(), d, target, self.hebbian, eta, e, _torch_matmul, compiled, rest_steps
            )
            neuron.v = v
            neuron.trace = torch.from_numpy(tr)
            if i in scoring:
                logit += scalar_logit(d, tr[0])
        return torch.tensor([logit > 0])


class SpikingScorer:
    """Scores every candidate label of a batch of images with a trained network.

    With ``share_image_spikes`` (default) all labels of an image see the same image spikes
    and the same uniform draws for their label bits (common random numbers), so the image
    part of the first layer's current is computed once per image instead of once per label.
    """

    chunk = 250  # images per internal batch: bounds the [C, T, N, H] current tensor

    def __init__(
        self,
        net: SpikingFFNet,
        share_image_spikes: bool = True,
        seed: int = 0,
        device="cpu",
        use_state: bool = True,
        repeats: int = 1,
    ) -> None:
        self.net = net
        self.share = share_image_spikes
        self.repeats = repeats  # scores summed over independent presentations (less rate-code noise)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # With use_state the scorer continues from (and leaves behind) the network's membranes,
        # as the paper's test loop does; without, every call starts from rest and the network's
        # state is untouched (used to pick hard negatives in the middle of training).
        self.use_state = use_state

    @torch.no_grad()
    def layer_outputs(self, x: Tensor, spikes: Tensor | None = None, counts: bool = False) -> list[Tensor]:
        """Every layer's final trace (or spike count) for every label, each ``[C, N, H]``.

        ``spikes`` ``[C, T, N, D']`` replaces the random input (used by the equivalence tests).
        """
        if spikes is None and x.shape[0] > self.chunk:
            parts = [self.layer_outputs(x[i : i + self.chunk], None, counts) for i in range(0, x.shape[0], self.chunk)]
            return [torch.cat(p, dim=1) for p in zip(*parts)]
        net = self.net
        weights = [layer.weight.data for layer in net.layers]
        states = net.state() if self.use_state else [None] * len(weights)
        carry, rest_steps = net.encoder.carry_membrane, net.encoder.rest_steps
        code = net.embedding.label_code
        num_labels = code.num_classes if spikes is None else spikes.shape[0]
        if spikes is None:
            gain, d = net.encoder.gain, net.in_features
            label_rates = torch.tensor(code.label_rates(gain), dtype=x.dtype, device=x.device)
            rates = (code.image_rates(x, gain), label_rates, code.image_slice(d), code.label_slice(d))
        rows = self._present_rows(x, weights, num_labels, carry) if spikes is not None or self.share else 0
        if rows:  # one launch per layer (and per label, with carried membranes)
            if spikes is None:
                width = weights[0].shape[1]  # the embedded input: image and label positions
                first = label_spikes(*rates, width, net.encoder.steps, self.generator, net.encoder.coding)
            else:
                first = spikes.__getitem__
            outs, finals = score_labels_present(
                first, num_labels, weights, net.dynamics, states, carry, rest_steps, kernels.present, rows, counts
            )
        else:
            if spikes is None:
                steps, coding = net.encoder.steps, net.encoder.coding
                current = label_currents(*rates, weights[0], steps, self.generator, self.share, coding)
            else:
                current = spike_currents(spikes, weights[0])
            outs, finals = score_labels(
                current, num_labels, weights, net.dynamics, states, carry, rest_steps, net.backend, counts
            )
        if self.use_state:
            for layer, v in zip(net.layers, finals):
                if v is not None:
                    layer.neuron.v = v
        return outs

    def _present_rows(self, x: Tensor, weights: list[Tensor], num_labels: int, carry: bool) -> int:
        """Samples per launch when every layer's presentation can be one launch of the
        presentation kernel (``kernels.present_rows``; CuPy on a GPU, float32), at least one
        label's images; else 0 (the per-step path)."""
        n = x.shape[0]
        if x.dtype != torch.float32:
            return 0
        backend, neuron = self.net.backend, self.net.dynamics.neuron
        rows = n if carry else num_labels * n
        while rows:  # until every layer takes launches of the same size
            fit = min(kernels.present_rows(backend, w, neuron, rows, w.shape[1], n) for w in weights)
            if fit == rows:
                break
            rows = fit
        return rows if rows >= n else 0

    @torch.no_grad()
    def scores(self, x: Tensor, spikes: Tensor | None = None) -> Tensor:
        """Summed layer scores of every label, ``[N, C]`` (summed over ``repeats`` presentations)."""
        if x.shape[0] == 0:  # the tail of a split test set can be empty
            return torch.zeros(0, self.net.num_classes, device=x.device)
        total = None
        for _ in range(1 if spikes is not None else self.repeats):
            traces = self.layer_outputs(x, spikes)
            c, n, _ = traces[0].shape
            flat = [tr.reshape(c * n, -1) for tr in traces]
            s = self.net.score_activities(flat).reshape(c, n).transpose(0, 1)
            total = s if total is None else total + s
        return total

    def predict(self, x: Tensor) -> Tensor:
        return self.scores(x).argmax(-1)

    @torch.no_grad()
    def latent(self, x: Tensor, labels: Tensor) -> Tensor:
        """Spike counts of every layer with ``labels`` shown, ``[N, sum H]``."""
        net = self.net
        spikes = net.encode(net.rates(x, labels), self.generator).unsqueeze(0)  # [1, T, N, D']
        counts = self.layer_outputs(x, spikes, counts=True)
        return torch.cat([cnt[0] for cnt in counts], dim=-1)
