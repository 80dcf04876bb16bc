"""Linear softmax readout on the latent activity of a trained analog FF network.

The FF layers stay frozen; the readout sees the activity produced with a *neutral* label
(the mean of all label codes), as in Hinton's FF paper, so one pass classifies an image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from spikingjelly_ff.nn.models import AnalogFFNet

if TYPE_CHECKING:  # the section's fields are read, never built, here
    from spikingjelly_ff.runs.config import ReadoutConfig

__all__ = ["train_readout"]


def train_readout(
    net: AnalogFFNet,
    rc: ReadoutConfig,
    seed: int,
    x: Tensor,
    labels: Tensor,
    device,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit ``net.readout`` on images ``x`` ``[N, D]`` (batches shuffled from ``seed``); returns
    training accuracy per epoch."""
    layers = rc.layers if rc.layers is not None else (list(range(1, len(net.widths))) or [0])
    head = net.attach_readout(layers).to(device)
    with torch.no_grad():
        feats = torch.cat(
            [net.latent(net.activities(net.embedding.neutral(x[i : i + 2000])), layers) for i in range(0, len(x), 2000)]
        )
    opt = torch.optim.Adam(head.parameters(), lr=rc.lr)
    gen = torch.Generator().manual_seed(seed + 5)
    history = []
    for epoch in range(rc.epochs):
        order = torch.randperm(len(feats), generator=gen).to(device)
        correct = 0
        for i in range(0, len(order), 100):
            idx = order[i : i + 100]
            logits = head(feats[idx])
            loss = torch.nn.functional.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            correct += int((logits.argmax(-1) == labels[idx]).sum())
        history.append(correct / len(feats))
        log(f"readout epoch {epoch + 1}: train acc {history[-1]:.4f}")
    return {"layers": layers, "train_accuracy": history}
