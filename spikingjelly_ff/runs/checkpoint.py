"""Model directories: weights (safetensors) with the config that built them.

Layout of ``MODEL_DIR``::

    config.json        {"format": "spikingjelly-ff/model", "format_version": 1,
                        "library_version": ..., "run": <RunConfig>, "in_features": 784,
                        "num_classes": 10, "readout_layers": [...] | null, "image_shape": [28, 28]}
    model.safetensors  every parameter and buffer of the network
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from spikingjelly_ff import __version__
from spikingjelly_ff.nn.models import FFNet
from spikingjelly_ff.runs.build import build_model
from spikingjelly_ff.runs.config import RunConfig, config_from_dict

__all__ = ["CheckpointError", "load_model", "save_model"]

FORMAT = "spikingjelly-ff/model"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A model directory is missing, incomplete or from an incompatible version."""


def save_model(
    model_dir: str | os.PathLike,
    net: FFNet,
    cfg: RunConfig,
    image_shape: tuple[int, int] = (28, 28),
) -> Path:
    """Write ``net`` and ``cfg`` to ``model_dir`` (created if needed)."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "kind": net.kind,
        "in_features": net.in_features,
        "num_classes": net.num_classes,
        "image_shape": list(image_shape),
        "readout_layers": net.readout_layers if net.readout is not None else None,
        "run": cfg.to_dict(),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = d / "model.safetensors.part"
    save_file(tensors, str(tmp))
    os.replace(tmp, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return d


def read_meta(model_dir: str | os.PathLike) -> dict:
    d = Path(model_dir)
    path = d / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{d} is not a model directory (no config.json)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a spikingjelly-ff model (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('format_version')} is not supported")
    return meta


def load_model(
    model_dir: str | os.PathLike, device: str = "cpu", backend: str = "torch"
) -> tuple[FFNet, RunConfig, dict]:
    """Rebuild the network from ``config.json`` and load its weights."""
    d = Path(model_dir)
    meta = read_meta(d)
    cfg = config_from_dict(meta["run"])
    shape = tuple(meta["image_shape"]) if meta.get("image_shape") else None
    net = build_model(cfg.model, meta["in_features"], meta["num_classes"], cfg.seed, backend, shape)
    if shape:
        net.image_shape = shape
    if meta.get("readout_layers") is not None:
        net.attach_readout(meta["readout_layers"], cfg.train.readout.grid)  # a conv net's grid: the config's
    weights = d / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{d}: model.safetensors is missing")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{weights}: cannot read weights ({exc})") from exc
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match the config (missing {missing}, unexpected {unexpected})"
        )
    net.to(device)
    net.eval()
    return net, cfg, meta
