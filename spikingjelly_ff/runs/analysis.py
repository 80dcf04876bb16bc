"""Latent-space analysis: Hoyer sparsity, k-NN separability, silent units and a t-SNE picture.

Latents are computed on test images with the correct label embedded: the concatenated
layer activities for analog models, each channel's mean over its map for analog conv models
(a competitive one sees the plain image), the spike counts over the input steps for spiking
models (as the paper does). A unit is silent when its latent is 0 on every image: a ReLU that
never opens, a neuron that never fires, a channel dark over every map.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["analyze_model", "hoyer", "latents", "separability", "silent_units", "tsne_plot"]


def hoyer(latent: Tensor, eps: float = 1e-3) -> float:
    """Mean Hoyer sparsity (sqrt(n) - L1/L2) / (sqrt(n) - 1) of the rows of ``latent`` ``[N, n]``;
    1 = one active unit, 0 = all equal. ``eps`` keeps all-zero rows finite (the paper's 0.001)."""
    n = latent.shape[1]
    l1 = latent.abs().sum(1)
    l2 = latent.norm(dim=1)
    return float(((math.sqrt(n) - (l1 + eps) / (l2 + eps)) / (math.sqrt(n) - 1)).mean())


def separability(latent: Tensor, labels: Tensor, k: int = 5, chunk: int = 1024) -> float:
    """Fraction of each latent's ``k`` nearest Euclidean neighbours (itself excluded) that share
    its label. ``latent`` ``[N, n]``, ``labels`` ``[N]``."""
    x = latent.float()
    same = 0
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)
        rows = torch.arange(i, min(i + chunk, len(x)))
        d[rows - i, rows] = float("inf")
        idx = d.topk(k, dim=1, largest=False).indices
        same += int((labels[idx] == labels[rows].unsqueeze(1)).sum())
    return same / (k * len(x))


@torch.no_grad()
def latents(net, x: Tensor, labels: Tensor, seed: int = 0) -> Tensor:
    """Latents ``[N, sum H]`` with the correct labels shown."""
    from spikingjelly_ff.nn.conv_models import ConvScores
    from spikingjelly_ff.nn.models import AnalogFFNet

    if isinstance(net, ConvScores):
        if not isinstance(net, AnalogFFNet):
            raise ValueError("sjff analyze covers dense and analog conv models; a spiking conv model has none yet")
        shown = x if net.competitive else net.embedding(x, labels)
        # in parts: a wide net's first map alone is ~0.2 MB per image
        return torch.cat([_channel_means(net.activities(part)) for part in torch.split(shown, 500)])
    if isinstance(net, AnalogFFNet):
        return torch.cat(net.label_activities(x, labels), dim=1)
    from spikingjelly_ff.learning.engine import SpikingScorer

    scorer = SpikingScorer(net, seed=seed)
    return torch.cat([scorer.latent(x[i : i + 1000], labels[i : i + 1000]) for i in range(0, len(x), 1000)])


def _channel_means(maps: list[Tensor]) -> Tensor:
    """``[N, sum C]``: each channel's mean over its ``[N, C, H, W]`` map, the layers side by side."""
    return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)


def silent_units(latent: Tensor, widths: list[int]) -> list[int]:
    """Units of each layer whose latent is 0 on every row of ``latent`` ``[N, sum widths]``."""
    return [int((part.abs().amax(dim=0) == 0).sum()) for part in torch.split(latent, widths, dim=1)]


def tsne_plot(latent: Tensor, labels: Tensor, path: str | Path, title: str = "", n: int = 1500, seed: int = 0) -> Path:
    """2-D t-SNE of the first ``n`` latents, coloured by label, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    z = latent[:n].float().numpy()
    coords = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(z)
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(coords[:, 0], coords[:, 1], s=2, c=labels[:n].numpy(), cmap="tab10")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    ax.legend(*sc.legend_elements(), loc="upper right", fontsize=6, markerscale=0.8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def analyze_model(
    model_dir, dataset: str | None = None, limit: int | None = None, plot=None, device: str = "cpu", seed: int = 0
) -> dict:
    """Hoyer, separability and silent units (per layer, of ``widths``) of a model's test
    latents; optionally a t-SNE PNG."""
    from spikingjelly_ff.runs.build import resolve_device
    from spikingjelly_ff.runs.checkpoint import load_model
    from spikingjelly_ff.runs.data import load_split

    device = resolve_device(device)
    net, cfg, meta = load_model(model_dir, device=device)
    ds = dataset or cfg.data.dataset
    data = load_split(ds, "test", cfg.data.root, download=cfg.data.download).take(limit)
    if data.images.shape[1] != meta["in_features"]:
        raise ValueError(f"{ds} images have {data.images.shape[1]} pixels; the model expects {meta['in_features']}")
    x, y = data.to_tensors(device)
    t0 = time.perf_counter()
    z = latents(net, x, y, seed).cpu()
    out = {
        "hoyer": hoyer(z),
        "separability": separability(z, y.cpu()),
        "silent": silent_units(z, list(net.widths)),
        "widths": list(net.widths),
        "n": len(y),
        "width": z.shape[1],
        "dataset": ds,
    }
    if plot:
        out["plot"] = str(tsne_plot(z, y.cpu(), plot, title=cfg.name, seed=seed))
    out["seconds"] = time.perf_counter() - t0
    return out
