"""The model repository: ``REPO/<model>/<version>/model.onnx|model.nir`` (+ optional config).

::

    models/
      mnist/
        config.json          optional, for every version of the model
        1/model.onnx         analog export (served by onnxruntime)
        2/model.onnx
        2/config.json        optional, overrides the model's config for this version
      mnist-snn/
        1/model.nir          spike export (served by the numpy runtime)

Model names are ``[A-Za-z0-9][A-Za-z0-9_.-]*``; versions are positive integers. A request
without a version gets the highest one. ``config.json`` keys (all optional):

    max_batch_size      largest dynamic batch (default 64 analog, 1 spiking)
    max_queue_delay_us  how long the first request of a batch may wait for others (default 0)
    learning            whether on-line learning is enabled (default true; needs --state-dir)
    threads             onnxruntime intra-op threads (default: --ort-threads)
    max_steps           largest per-request "steps" of a spiking model (default 4x its own; at most MAX_STEPS)
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from spikingjelly_ff.functional.params import MAX_STEPS

__all__ = ["ServingConfig", "ModelSpec", "RepositoryError", "scan_repository"]

log = logging.getLogger("sjff_server.repository")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
ARTEFACTS = ("model.onnx", "model.nir")


class RepositoryError(ValueError):
    """The repository or a model in it is malformed."""


@dataclass(frozen=True)
class ServingConfig:
    """Serving settings of one model version (``config.json``)."""

    max_batch_size: int | None = None
    max_queue_delay_us: int = 0
    learning: bool = True
    threads: int | None = None
    max_steps: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> ServingConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise RepositoryError(f"{where}: unknown config keys {unknown} (known: {sorted(known)})")
        for key in ("max_batch_size", "max_queue_delay_us", "threads", "max_steps"):
            v = data.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise RepositoryError(f"{where}: {key} must be a non-negative integer, got {v!r}")
        if (data.get("max_steps") or 0) > MAX_STEPS:  # a presentation the encoder refuses
            raise RepositoryError(f"{where}: max_steps must be at most {MAX_STEPS}, got {data['max_steps']}")
        if "learning" in data and not isinstance(data["learning"], bool):
            raise RepositoryError(f"{where}: learning must be true or false")
        return cls(**data)


@dataclass(frozen=True)
class ModelSpec:
    """One servable model version found in the repository."""

    name: str
    version: str
    path: Path
    kind: str  # RuntimeModel.kind: "analog" | "spiking"
    config: ServingConfig


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RepositoryError(f"{path}: must hold a JSON object")
    return data


def scan_repository(root: Path) -> tuple[list[ModelSpec], list[str]]:
    """Every model version under ``root`` and a list of problems (skipped entries)."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a directory")
    specs: list[ModelSpec] = []
    problems: list[str] = []
    for mdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not NAME.match(mdir.name):
            problems.append(f"{mdir}: not a valid model name")
            continue
        try:
            base = _read_config(mdir / "config.json")
        except RepositoryError as exc:
            problems.append(str(exc))
            continue
        versions = [v for v in mdir.iterdir() if v.is_dir() and v.name.isdigit() and int(v.name) > 0]
        if not versions:
            problems.append(f"{mdir}: no version directories (1/, 2/, ...)")
        for vdir in sorted(versions, key=lambda p: int(p.name)):
            found = [vdir / a for a in ARTEFACTS if (vdir / a).is_file()]
            if len(found) != 1:
                problems.append(f"{vdir}: needs exactly one of {', '.join(ARTEFACTS)}, found {len(found)}")
                continue
            try:
                cfg = ServingConfig.from_dict({**base, **_read_config(vdir / "config.json")}, str(vdir))
            except RepositoryError as exc:
                problems.append(str(exc))
                continue
            kind = "analog" if found[0].suffix == ".onnx" else "spiking"
            specs.append(ModelSpec(mdir.name, str(int(vdir.name)), found[0], kind, cfg))
    return specs, problems
