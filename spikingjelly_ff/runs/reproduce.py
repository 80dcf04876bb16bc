"""``sjff reproduce paper|beyond``: train a table's rows over several seeds and tabulate them.

``paper``: the six rows of arXiv 2406.16479's Table 1, accuracy, Hoyer sparsity and
separability (mean ± sd) beside the paper's figures. ``beyond``: the README's models past the
paper (``configs/spiking-mnist.yaml`` ...), test accuracy mean ± sd with every seed's value."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from spikingjelly_ff.runs.analysis import hoyer, latents, separability, tsne_plot
from spikingjelly_ff.runs.checkpoint import load_model
from spikingjelly_ff.runs.config import load_config
from spikingjelly_ff.runs.data import load_split
from spikingjelly_ff.runs.train import train

__all__ = ["BEYOND", "DEFAULT_SEEDS", "METRICS", "PAPER", "mean_sd", "reproduce_beyond", "reproduce_paper"]

# row -> (title, test accuracy %, Hoyer index, separability), as published.
PAPER = {
    "analog-sigmoid": ("Analog P_sigma", 88.97, 0.9994, 0.9556),
    "analog-symmetric": ("Analog P_sym", 94.87, 0.9789, 0.9865),
    "hebbian-batched-sigmoid": ("Batched Hebbian P_sigma", 85.38, 0.9650, 0.9969),
    "hebbian-batched-symmetric": ("Batched Hebbian P_sym", 92.73, 0.9781, 0.9649),
    "hebbian-online-sigmoid": ("Online Hebbian P_sigma", 81.72, 0.9664, 0.9973),
    "hebbian-online-symmetric": ("Online Hebbian P_sym", 94.33, 0.9641, 0.9822),
}

# row (a config under configs/) -> (title, dataset): the README's "Beyond the paper" table.
BEYOND = {
    "spiking-mnist": ("Spiking Hebbian, 1000 LIF, hard negatives, no autograd", "MNIST"),
    "spiking-fashion": ("Spiking Hebbian, 1000 LIF, regular rate coding, no autograd", "Fashion-MNIST"),
    "analog-deep": ("Analog FF, 2 × 2000 ReLU, hard negatives, shifts, 5 test views", "MNIST"),
    "conv/analog-competitive-mnist": ("Analog conv FF, channel-wise competitive, 30-120-360, 5 test views", "MNIST"),
    "conv/analog-competitive-fashion": (
        "Analog conv FF, channel-wise competitive, 60-240-480, warm-up, 5 test views",
        "Fashion-MNIST",
    ),
    "conv/spiking-competitive-adam-mnist": (
        "Spiking conv Hebbian, channel-wise competitive, 20-40-80, Adam once per presentation, no autograd",
        "MNIST",
    ),
    "conv/spiking-competitive-adam-fashion": (
        "Spiking conv Hebbian, channel-wise competitive, 20-40-80, Adam once per presentation, no autograd",
        "Fashion-MNIST",
    ),
    "conv/spiking-soft-fashion": (
        "Spiking conv Hebbian, the same with a soft reset (threshold 0.35) and 23 steps, no autograd",
        "Fashion-MNIST",
    ),
    "conv/spiking-soft-mnist": (
        "Spiking conv Hebbian, the same with a soft reset (threshold 0.35) and 23 steps, no autograd",
        "MNIST",
    ),
    "conv/spiking-soft-shift-mnist": (
        "Spiking conv Hebbian, the same trained on 1-pixel shifts, 5 test views, no autograd",
        "MNIST",
    ),
    "conv/spiking-soft-shift-wide-mnist": (
        "Spiking conv Hebbian, the same on 30-60-120 channels, 5 test views, no autograd",
        "MNIST",
    ),
    "conv/spiking-readout-fashion": (
        "Spiking conv Hebbian, soft reset, 30-60-120, 3 epochs, linear readout by the delta rule, no autograd",
        "Fashion-MNIST",
    ),
}

#: Seeds per row unless told: the paper's runs are short, the others are not.
DEFAULT_SEEDS = {"paper": 5, "beyond": 3}

#: The per-seed values kept in ``results.json`` and summarised as mean ± sd.
METRICS = ("test_accuracy", "hoyer", "separability", "seconds_per_epoch", "train_seconds")
_TRAIN_METRICS = ("test_accuracy", "seconds_per_epoch", "train_seconds")


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1) of ``values``; the sd is ``None`` for one value."""
    if not values:
        raise ValueError("mean_sd needs at least one value, got none")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _overrides(epochs: int | None, limit: int | None, test_limit: int | None) -> list[str]:
    sets = []
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    if limit is not None:
        sets.append(f"train.limit={limit}")
    if test_limit is not None:
        sets.append(f"eval.limit={test_limit}")
    return sets


def _analyse(run: Path, test_limit: int | None, plot: Path | None) -> dict:
    net, cfg, _ = load_model(run / "model")
    data = load_split(cfg.data.dataset, "test", cfg.data.root, cfg.data.download).take(test_limit)
    x, y = data.to_tensors()
    z = latents(net, x, y, seed=cfg.seed)
    if plot is not None:
        tsne_plot(z, y, plot, title=cfg.name)
    return {"hoyer": hoyer(z), "separability": separability(z, y), "latents": z, "labels": y}


def _grid(entries: list[tuple[str, torch.Tensor, torch.Tensor, dict]], path: Path) -> None:
    """The paper's figure: t-SNE of every row's latents in one picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    cols = 3
    rows = (len(entries) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, z, y, res) in zip(axes.flat, entries):
        coords = TSNE(n_components=2, random_state=0, init="pca").fit_transform(z[:1500].float().numpy())
        ax.scatter(coords[:, 0], coords[:, 1], s=1, c=y[:1500].numpy(), cmap="tab10")
        ax.set_title(title, fontsize=11)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"Hoyer {res['hoyer']:.4f}  separability {res['separability']:.4f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary(sets: list[str], runs: list[dict], metrics: tuple[str, ...]) -> dict:
    """A row's entry in ``results.json``: the per-seed records and their mean and sd per metric."""
    stats = {m: mean_sd([r[m] for r in runs]) for m in metrics}
    return {
        "overrides": sets,
        "seeds": [r["seed"] for r in runs],
        "runs": runs,
        "mean": {m: s[0] for m, s in stats.items()},
        "sd": {m: s[1] for m, s in stats.items()},
    }


def _check(rows: list[str] | None, table: dict, seeds: int) -> list[str]:
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    rows = list(table) if not rows else rows
    unknown = [r for r in rows if r not in table]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; choose from {list(table)}")
    return rows


def _seed_runs(config: str, run_dir: Path, prev: dict | None, sets: list[str], seeds: int, progress: bool, log):
    """Yield ``(k, run_dir, record)`` for seeds ``seed … seed + seeds − 1`` of ``config``,
    training those not in ``prev`` (the row's ``results.json`` entry) with the same ``sets``."""
    first = load_config(config, sets).seed
    prev = prev or {}
    # earlier seeds of the same settings are reused; any other settings retrain
    done = {r["seed"]: r for r in prev.get("runs", [])} if prev.get("overrides") == sets else {}
    for k in range(seeds):
        seed = first + k
        run = run_dir / f"seed-{seed}"
        rec = done.get(seed)
        if not (rec and (run / "model" / "config.json").is_file()):
            cfg = load_config(config, [*sets, f"seed={seed}"])
            log(f"== {config} seed {seed}: training ({cfg.train.epochs} epochs)")
            t0 = time.perf_counter()
            # a seed stopped part-way goes on from its last state (resume.pt)
            final = train(cfg, run, log=log, progress=progress, resume=None)["final"]
            rec = {
                "seed": seed,
                "test_accuracy": final["test_accuracy"],
                "seconds_per_epoch": final["seconds_per_epoch"],
                "train_seconds": time.perf_counter() - t0,
            }
            if "test_accuracy_single_view" in final:
                rec["test_accuracy_single_view"] = final["test_accuracy_single_view"]
            if final.get("readout_test_accuracy") is not None:  # the model's class is its readout's
                rec["goodness_test_accuracy"] = final["test_accuracy"]
                rec["test_accuracy"] = final["readout_test_accuracy"]
        yield k, run, dict(rec)


def _start(out, table: dict, rows, seeds: int, epochs, limit, test_limit) -> tuple[Path, list[str], list[str], dict]:
    """Check the request, make ``out``; return it, the rows, the config overrides and the
    ``results.json`` already there (``{}`` for none)."""
    out = Path(out)
    rows = _check(rows, table, seeds)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    return out, rows, _overrides(epochs, limit, test_limit), results


def reproduce_paper(
    out: str | Path,
    epochs: int | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    rows: list[str] | None = None,
    seeds: int = DEFAULT_SEEDS["paper"],
    progress: bool = True,
    log=print,
) -> dict:
    """Train every row (or ``rows``) with seeds ``seed, seed + 1, …`` (``seeds`` of them, from the
    row config's seed) into ``out/<row>/seed-<s>/``, analyse the latents, write ``out/table.md``
    (mean ± sd per row) and ``out/results.json`` (per-seed values). A seed already trained with
    the same settings is reused, so an interrupted run resumes and ``--seeds`` can be raised later.
    The t-SNE pictures show each row's first seed."""
    out, rows, sets, results = _start(out, PAPER, rows, seeds, epochs, limit, test_limit)
    grid = []
    for row in rows:
        runs = []
        for k, run, rec in _seed_runs(f"paper/{row}", out / row, results.get(row), sets, seeds, progress, log):
            log(f"== {row} seed {rec['seed']}: analysing latents")
            res = _analyse(run, test_limit, out / row / "tsne.png" if k == 0 else None)
            rec.update(hoyer=res["hoyer"], separability=res["separability"])
            runs.append(rec)
            if k == 0:
                grid.append((PAPER[row][0], res["latents"], res["labels"], res))
            results[row] = _summary(sets, runs, METRICS)
            (out / "results.json").write_text(json.dumps(results, indent=2))
    _grid(grid, out / "latents_tsne.png")
    (out / "table.md").write_text(_table(results, rows, sets))
    return results


def reproduce_beyond(
    out: str | Path,
    epochs: int | None = None,
    limit: int | None = None,
    test_limit: int | None = None,
    rows: list[str] | None = None,
    seeds: int = DEFAULT_SEEDS["beyond"],
    progress: bool = True,
    log=print,
) -> dict:
    """The README's models past the paper (:data:`BEYOND`), each trained with ``seeds`` seeds
    into ``out/<row>/seed-<s>/``; ``out/table.md`` gives the test accuracy as mean ± sd with
    every seed's value, ``out/results.json`` the per-seed records. Resumes like
    :func:`reproduce_paper`."""
    out, rows, sets, results = _start(out, BEYOND, rows, seeds, epochs, limit, test_limit)
    for row in rows:
        runs = []
        for _, _, rec in _seed_runs(row, out / row, results.get(row), sets, seeds, progress, log):
            runs.append(rec)
            results[row] = _summary(sets, runs, _TRAIN_METRICS)
            (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(_beyond_table(results, rows, sets))
    return results


def _cell(values: list[float], digits: int, scale: float = 1.0) -> str:
    """``mean ± sd`` of ``scale * values`` with ``digits`` decimals; ``–`` for the sd of one value."""
    mean, sd = mean_sd([scale * v for v in values])
    return f"{mean:.{digits}f} ± " + ("–" if sd is None else f"{sd:.{digits}f}")


def _table(results: dict, rows: list[str], sets: list[str]) -> str:
    counts = sorted({len(results[row]["runs"]) for row in rows})
    lines = [
        "# arXiv 2406.16479, Table 1, reproduced",
        "",
        "Settings: the configs in `spikingjelly_ff/configs/paper/`"
        + (f" with {', '.join(sets)}." if sets else ", full MNIST, 10 epochs."),
        "Accuracy is MNIST test accuracy (%); Hoyer and separability are computed on the test latents",
        "with the correct label shown (spike counts for spiking rows).",
        f"Ours: mean ± sample sd (n − 1) over {'/'.join(map(str, counts))} seeds (the config's seed, seed + 1, …;",
        "per-seed values in `results.json`); Δ = mean − paper.",
        "",
        "| Row | Accuracy (paper) | Accuracy (ours) | Δ | Hoyer (paper) | Hoyer (ours) "
        "| Separability (paper) | Separability (ours) | s/epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        title, acc, hy, sep = PAPER[row]
        runs = results[row]["runs"]
        per = {m: [r[m] for r in runs] for m in METRICS}
        delta = mean_sd([100 * v for v in per["test_accuracy"]])[0] - acc
        lines.append(
            f"| {title} | {acc:.2f} | {_cell(per['test_accuracy'], 2, 100.0)} | {delta:+.2f} | {hy:.4f} | "
            f"{_cell(per['hoyer'], 4)} | {sep:.4f} | {_cell(per['separability'], 4)} | "
            f"{_cell(per['seconds_per_epoch'], 1)} |"
        )
    lines += [
        "",
        "Latent spaces (t-SNE of 1,500 test latents, first seed): `latents_tsne.png`; per row: `<row>/tsne.png`.",
        "",
    ]
    return "\n".join(lines)


def _beyond_table(results: dict, rows: list[str], sets: list[str]) -> str:
    lines = [
        "# Beyond the paper",
        "",
        "Settings: the configs in `spikingjelly_ff/configs/`"
        + (f" with {', '.join(sets)}." if sets else ", full data sets, 10 epochs."),
        "Test accuracy (%): mean ± sample sd (n − 1) over the seeds listed (the config's seed, seed + 1, …).",
        "",
        "| Model | Data | Accuracy | per seed | s/epoch | config |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in rows:
        title, data = BEYOND[row]
        runs = results[row]["runs"]
        acc = [r["test_accuracy"] for r in runs]
        per = ", ".join(f"{100 * a:.2f}" for a in acc)
        lines.append(
            f"| {title} | {data} | {_cell(acc, 2, 100.0)} | {per} (seeds {', '.join(str(r['seed']) for r in runs)}) "
            f"| {_cell([r['seconds_per_epoch'] for r in runs], 1)} | `{row}` |"
        )
    return "\n".join([*lines, ""])
