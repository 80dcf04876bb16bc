"""The conv layers of a spike artefact: their settings (meta ``conv``) and their NIR nodes.

A spiking conv net is written as a NIR graph with two inputs, the image ``input``
``[1, H, W]`` and the label spikes ``label`` ``[L, 1, 1]``; per layer i::

    (input | previous layer) -> conv_i (Conv2d, W [C, I, KH, KW]) ──┐
    label -> label_i (Conv2d) ────────────────────────────────────── lif_i (LIF [C, OH, OW])
    lif_i -> pool_i (SumPool2d) -> max_i (Threshold 0.5)   for max pooling (max of 0/1 spikes)
    lif_i -> pool_i (AvgPool2d)                            for average pooling

and the last layer feeds ``output``. A channel-wise competitive net sees no label (meta
``labelled`` false): its graph has no ``label`` input and no ``label_i`` nodes, and its label
weights are empty ``[0, C, OH, OW]`` arrays. NIR sums the edges into a node, and has no per-location
linear map, so the label weights B ``[L, C, OH, OW]`` (one weight per unit and label) are the
kernel of ``label_i``: a Conv2d with padding (OH - 1, OW - 1) on the ``[L, 1, 1]`` label input
outputs exactly code @ B ``[C, OH, OW]`` when its kernel is B with the first two axes swapped
and both spatial axes reversed (:func:`label_to_nir`). That node is the one copy of B in the
file; meta ``conv`` names it. Numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from spikingjelly_ff.functional.conv import (
    check_conv_settings,
    check_map_shape,
    conv_output_size,
    goodness_groups,
    pooled_shape,
)
from spikingjelly_ff.functional.readout import readout_grid
from spikingjelly_ff.functional.views import check_views

__all__ = [
    "ConvLayerMeta",
    "ConvReadout",
    "SpikeConv",
    "label_from_nir",
    "label_to_nir",
    "read_conv_weights",
    "write_conv_nodes",
]


@dataclass(frozen=True)
class ConvLayerMeta:
    """One conv layer: ``channels`` C, square ``kernel``, ``stride``, zero ``padding``, the
    pooling of its spikes (``pool`` None, "max" or "avg" over ``pool_size`` windows), and the
    shapes it reads ``in_shape`` ``(I, H, W)`` and its map ``map_shape`` ``(C, OH, OW)``."""

    channels: int
    kernel: int
    stride: int
    padding: int
    pool: str | None
    pool_size: int
    in_shape: tuple[int, int, int]
    map_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        # a tampered artefact fails here, as a ValueError that names the setting (read_artifact
        # makes it an ArtifactError), not as a ZeroDivisionError in the shape checks
        check_conv_settings(self.kernel, self.stride, self.padding, self.pool, self.pool_size, self.channels)
        object.__setattr__(self, "in_shape", check_map_shape(self.in_shape, "in_shape"))
        object.__setattr__(self, "map_shape", check_map_shape(self.map_shape, "map_shape"))

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """What the next layer reads: the map, pooled."""
        return pooled_shape(self.map_shape, self.pool, self.pool_size)

    def weight_shape(self) -> tuple[int, int, int, int]:
        return self.channels, self.in_shape[0], self.kernel, self.kernel


@dataclass(frozen=True)
class ConvReadout:
    """A linear softmax readout on the trace maps of ``layers``, each averaged on a ``grid`` x
    ``grid`` tiling (``functional.readout``); its weight ``[C, F]`` and bias ``[C]`` are the
    artefact's ``readout`` arrays. The class is its argmax, not the goodness score's."""

    layers: tuple[int, ...]
    grid: int

    @classmethod
    def from_dict(cls, d: dict) -> ConvReadout:
        layers, grid = d["layers"], d["grid"]
        if not isinstance(layers, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
            raise ValueError(f"readout layers must be a list of layer indices, got {layers!r}")
        if isinstance(grid, bool) or not isinstance(grid, int):
            raise ValueError(f"the readout grid must be an integer, got {grid!r}")
        return cls(tuple(layers), grid)

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "grid": self.grid}

    def width(self, layers: list[ConvLayerMeta]) -> int:
        """Width F of the readout's input."""
        return sum(layers[i].channels for i in self.layers) * self.grid * self.grid


@dataclass(frozen=True)
class SpikeConv:
    """The conv part of a spike artefact: goodness region ``over`` ("map", "location" or
    "group:K"), the layers and the test-time views (``shift_views``). The artefact's
    ``weights`` are the conv weights of every layer, then the label weights of every layer (the
    analog conv runtime's order); eligibility likewise."""

    over: str
    layers: list[ConvLayerMeta] = field(default_factory=list)
    #: whether the net has a label input (False: channel-wise competitive, no label nodes)
    labelled: bool = True
    #: scores sum over the image and its copies moved 1..N pixels (4N + 1 views; 0: the image)
    shift_views: int = 0
    #: the readout that classifies (None: the goodness score)
    readout: ConvReadout | None = None

    def __post_init__(self) -> None:
        check_views(self.shift_views)  # the bound needs the image shape: check()

    @classmethod
    def from_dict(cls, d: dict) -> SpikeConv:
        labelled = d.get("labelled", True)  # files written before competitive nets have labels
        if not isinstance(labelled, bool):
            raise ValueError(f"labelled must be true or false, got {labelled!r}")
        layers = [ConvLayerMeta(**{k: v for k, v in la.items() if k != "nodes"}) for la in d["layers"]]
        readout = ConvReadout.from_dict(d["readout"]) if d.get("readout") is not None else None
        return cls(d["over"], layers, labelled, d.get("shift_views", 0), readout)  # files before views: none

    def to_dict(self) -> dict:
        layers = []
        for i, la in enumerate(self.layers):
            entry = asdict(la) | {"in_shape": list(la.in_shape), "map_shape": list(la.map_shape)}
            # where the arrays are: W in conv_i, B in label_i (see label_to_nir)
            label = f"label_{i}" if self.labelled else None
            entry["nodes"] = {"conv": f"conv_{i}", "label_weights": label, "lif": f"lif_{i}"}
            layers.append(entry)
        out = {"over": self.over, "labelled": self.labelled, "shift_views": self.shift_views, "layers": layers}
        if self.readout is not None:
            out["readout"] = self.readout.to_dict()
        return out

    def node_names(self) -> list[str]:
        """The NIR nodes that hold the artefact's ``weights``, in order (no label nodes when
        the net is not ``labelled``: its label weights are empty)."""
        n = len(self.layers)
        return [f"conv_{i}" for i in range(n)] + ([f"label_{i}" for i in range(n)] if self.labelled else [])

    def check(self, weights: list[np.ndarray], image_shape, label_width: int, split: bool = False) -> str | None:
        """Why the layers do not fit ``weights``, the image shape and the label width, or None;
        ``split``: the probability splits each goodness entry (a channel group's channels
        must then be even)."""
        try:  # the region, and for channel groups every layer's channels
            goodness_groups(self.over, [la.channels for la in self.layers], split)
        except ValueError as exc:
            return str(exc)
        n = len(self.layers)
        if n == 0:
            return "the network has no conv layers"
        if len(weights) != 2 * n:
            return f"{n} conv layers need {2 * n} weight arrays (conv, then label weights), got {len(weights)}"
        if image_shape is None or len(image_shape) != 2:
            return "a conv artefact needs image_shape [H, W]"
        try:
            check_views(self.shift_views, tuple(int(v) for v in image_shape))
        except ValueError as exc:
            return str(exc)
        shape = (1, *(int(v) for v in image_shape))
        for i, la in enumerate(self.layers):
            if la.in_shape != shape:
                return f"conv layer {i} reads {la.in_shape}, the previous layer gives {shape}"
            hw = tuple(conv_output_size(s, la.kernel, la.stride, la.padding) for s in shape[1:])
            if la.map_shape != (la.channels, *hw) or min(hw) < 1:
                return f"conv layer {i}: map shape {la.map_shape} does not follow from the layer and its input"
            if weights[i].shape != la.weight_shape():
                return f"conv layer {i}: weight shape {weights[i].shape}, expected {la.weight_shape()}"
            want = (label_width, *la.map_shape)
            if weights[n + i].shape != want:
                return f"conv layer {i}: label weight shape {weights[n + i].shape}, expected {want}"
            shape = la.out_shape
        if self.readout is not None:
            if self.labelled:
                return "a readout reads the image's activity without a label: it needs a net without label input"
            try:
                readout_grid([la.map_shape for la in self.layers], list(self.readout.layers), self.readout.grid)
            except ValueError as exc:
                return f"readout: {exc}"
        return None


def label_to_nir(b: np.ndarray) -> np.ndarray:
    """Label weights B ``[L, C, OH, OW]`` as the kernel ``[C, L, OH, OW]`` of a Conv2d on the
    ``[L, 1, 1]`` label input with padding ``(OH - 1, OW - 1)``: out[c, y, x] =
    sum_l K[c, l, OH-1-y, OW-1-x] code[l] = (code @ B)[c, y, x]."""
    return np.ascontiguousarray(np.swapaxes(b, 0, 1)[:, :, ::-1, ::-1])


def label_from_nir(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`label_to_nir` (the same swap and reversal)."""
    return label_to_nir(k)


def _lif_group(nodes, name: str, strings, params: dict[str, np.ndarray]) -> None:
    g = nodes.create_group(name)
    g.create_dataset("type", data="LIF", dtype=strings)
    for k, v in params.items():
        g.create_dataset(k, data=v)


def _pair(v: int) -> np.ndarray:
    return np.array([v, v], dtype=np.int64)


def _conv_group(nodes, name: str, strings, w: np.ndarray, in_hw, stride: int, padding) -> None:
    g = nodes.create_group(name)
    g.create_dataset("type", data="Conv2d", dtype=strings)
    g.create_dataset("weight", data=np.asarray(w, dtype=np.float32))
    g.create_dataset("bias", data=np.zeros(w.shape[0], dtype=np.float32))
    g.create_dataset("stride", data=_pair(stride))
    g.create_dataset("padding", data=np.asarray(padding, dtype=np.int64))
    g.create_dataset("dilation", data=_pair(1))
    g.create_dataset("groups", data=np.int64(1))
    g.create_dataset("input_shape", data=np.asarray(in_hw, dtype=np.int64))


def write_conv_nodes(nodes, strings, conv: SpikeConv, weights: list[np.ndarray], label_width: int, lif) -> list:
    """Write the graph's nodes into the h5py group ``nodes``; returns the edges.
    ``lif(shape)`` gives the LIF parameters of a map of that shape."""
    n = len(conv.layers)
    inputs = [("input", conv.layers[0].in_shape)] + ([("label", (label_width, 1, 1))] if conv.labelled else [])
    for name, shape in inputs:
        g = nodes.create_group(name)
        g.create_dataset("type", data="Input", dtype=strings)
        g.create_dataset("shape", data=np.array(shape, dtype=np.int64))
    edges, prev = [], "input"
    for i, la in enumerate(conv.layers):
        _conv_group(nodes, f"conv_{i}", strings, weights[i], la.in_shape[1:], la.stride, _pair(la.padding))
        _lif_group(nodes, f"lif_{i}", strings, lif(la.map_shape))
        edges += [(prev, f"conv_{i}"), (f"conv_{i}", f"lif_{i}")]
        if conv.labelled:
            oh, ow = la.map_shape[1:]
            _conv_group(nodes, f"label_{i}", strings, label_to_nir(weights[n + i]), (1, 1), 1, [oh - 1, ow - 1])
            edges += [("label", f"label_{i}"), (f"label_{i}", f"lif_{i}")]
        prev = f"lif_{i}"
        if la.pool is not None:
            g = nodes.create_group(f"pool_{i}")
            g.create_dataset("type", data="SumPool2d" if la.pool == "max" else "AvgPool2d", dtype=strings)
            g.create_dataset("kernel_size", data=_pair(la.pool_size))
            g.create_dataset("stride", data=_pair(la.pool_size))
            g.create_dataset("padding", data=_pair(0))
            edges.append((prev, f"pool_{i}"))
            prev = f"pool_{i}"
            if la.pool == "max":  # the max of 0/1 spikes: whether their sum passes 1/2
                g = nodes.create_group(f"max_{i}")
                g.create_dataset("type", data="Threshold", dtype=strings)
                g.create_dataset("threshold", data=np.full(la.out_shape, 0.5, dtype=np.float32))
                edges.append((prev, f"max_{i}"))
                prev = f"max_{i}"
    g = nodes.create_group("output")
    g.create_dataset("type", data="Output", dtype=strings)
    g.create_dataset("shape", data=np.array(conv.layers[-1].out_shape, dtype=np.int64))
    edges.append((prev, "output"))
    return edges


def read_conv_weights(nodes, conv: SpikeConv) -> list[np.ndarray]:
    """The artefact's weights from the NIR nodes: conv weights, then label weights ``[L, C, OH, OW]``
    (empty ``[0, C, OH, OW]`` for a net without label input)."""
    n = len(conv.layers)
    kernels = [np.asarray(nodes[f"conv_{i}"]["weight"][()], dtype=np.float32) for i in range(n)]
    if not conv.labelled:
        stray = [k for k in ("label", *(f"label_{i}" for i in range(n))) if k in nodes]
        if stray:  # weights the runtime would drop, an input other NIR readers would see
            raise ValueError(f"a conv net without label input has label nodes: {', '.join(stray)}")
        return kernels + [np.zeros((0, *la.map_shape), dtype=np.float32) for la in conv.layers]
    labels = [label_from_nir(np.asarray(nodes[f"label_{i}"]["weight"][()], dtype=np.float32)) for i in range(n)]
    return kernels + labels
