"""Latent analysis metrics and the one-command reproduction of the paper's table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from spikingjelly_ff.runs.analysis import hoyer, separability


def test_hoyer_extremes():
    one_hot = torch.zeros(5, 16)
    one_hot[torch.arange(5), torch.arange(5)] = 3.0
    assert hoyer(one_hot, eps=0.0) == pytest.approx(1.0)
    assert hoyer(torch.ones(5, 16), eps=0.0) == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(1, 16)
    half[0, :4] = 1.0  # 4 equal active units of 16: (4 - 2) / 3
    assert hoyer(half, eps=0.0) == pytest.approx((math.sqrt(16) - 2) / (math.sqrt(16) - 1))


def test_separability_counts_same_label_neighbours():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    labels = torch.arange(3).repeat_interleave(20)
    z = centres[labels] + torch.randn(60, 2, generator=g)
    assert separability(z, labels, k=5, chunk=7) == 1.0
    assert separability(z, labels[torch.randperm(60, generator=g)]) < 0.6


def _cells(table: str, title: str) -> list[str]:
    """The cells of the table row titled ``title``."""
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {title} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def _mean_sd(cell: str) -> tuple[float, str]:
    mean, sd = cell.split(" ± ")
    return float(mean), sd


# metric -> (table column, scale, decimals shown)
COLUMNS = {
    "test_accuracy": (2, 100.0, 2),
    "hoyer": (5, 1.0, 4),
    "separability": (7, 1.0, 4),
    "seconds_per_epoch": (8, 1.0, 1),
}


def _tiny_runs(monkeypatch, mini: str, train: int, test: int) -> None:
    """Every row trains one epoch on ``train`` samples of the mini set, tested on ``test``."""
    from spikingjelly_ff.runs import reproduce

    sets = [f"data.dataset={mini}", "train.epochs=1", f"train.limit={train}", f"eval.limit={test}"]
    monkeypatch.setattr(reproduce, "_overrides", lambda e, lim, t: sets)


def test_reproduce_command_writes_the_table_over_seeds(tmp_path, monkeypatch, mini):
    from spikingjelly_ff.cli import main
    from spikingjelly_ff.runs import reproduce

    _tiny_runs(monkeypatch, mini, 300, 200)
    rows = ["analog-symmetric", "hebbian-online-symmetric"]
    titles = {"analog-symmetric": "Analog P_sym", "hebbian-online-symmetric": "Online Hebbian P_sym"}
    quiet = {"progress": False, "log": lambda s: None}

    # one seed: today's table, the sd shown as "–"
    res = reproduce.reproduce_paper(tmp_path, rows=rows, seeds=1, **quiet)
    table = (tmp_path / "table.md").read_text()
    assert "| Analog P_sym | 94.87 |" in table and "| Online Hebbian P_sym | 94.33 |" in table
    for row in rows:
        cells = _cells(table, titles[row])
        assert _mean_sd(cells[2]) == (pytest.approx(100 * res[row]["runs"][0]["test_accuracy"], abs=0.005), "–")
        assert all(c.endswith(" ± –") for c in (cells[2], cells[5], cells[7], cells[8]))
    assert (tmp_path / "latents_tsne.png").stat().st_size > 10_000
    assert all(0 <= r["mean"]["hoyer"] <= 1 and 0 <= r["mean"]["separability"] <= 1 for r in res.values())

    # two seeds through the command line: seed 0 is reused, seed 1 trained beside it
    mtime = (tmp_path / "analog-symmetric" / "seed-0" / "metrics.json").stat().st_mtime
    assert main(["reproduce", "paper", "--out", str(tmp_path), "--seeds", "2", "--rows", *rows, "--quiet"]) == 0
    assert (tmp_path / "analog-symmetric" / "seed-0" / "metrics.json").stat().st_mtime == mtime
    results = json.loads((tmp_path / "results.json").read_text())
    table = (tmp_path / "table.md").read_text()
    for row in rows:
        assert results[row]["seeds"] == [0, 1]
        assert (tmp_path / row / "seed-1" / "model" / "config.json").is_file()
        assert (tmp_path / row / "tsne.png").is_file()
        cells = _cells(table, titles[row])
        for metric, (col, scale, digits) in COLUMNS.items():
            values = scale * np.array([r[metric] for r in results[row]["runs"]])
            assert len(values) == 2
            mean, sd = _mean_sd(cells[col])
            tol = 0.5 * 10**-digits + 1e-9
            assert mean == pytest.approx(values.mean(), abs=tol)
            assert float(sd) == pytest.approx(values.std(ddof=1), abs=tol)
        acc = 100 * np.array([r["test_accuracy"] for r in results[row]["runs"]])
        assert float(cells[3]) == pytest.approx(acc.mean() - float(cells[1]), abs=0.005 + 1e-9)
    a, b = results["analog-symmetric"]["runs"]
    assert (a["test_accuracy"], a["hoyer"]) != (b["test_accuracy"], b["hoyer"])  # the seed reaches training

    with pytest.raises(ValueError, match="unknown rows"):
        reproduce.reproduce_paper(tmp_path, rows=["resnet"], log=lambda s: None)
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        reproduce.reproduce_paper(tmp_path, rows=rows, seeds=0, log=lambda s: None)


def test_reproduce_beyond_tabulates_every_seed(tmp_path, monkeypatch, mini):
    from spikingjelly_ff.cli import main
    from spikingjelly_ff.runs import reproduce

    _tiny_runs(monkeypatch, mini, 200, 100)
    rows = ["spiking-mnist", "analog-deep", "conv/analog-competitive-mnist"]
    assert main(["reproduce", "beyond", "--out", str(tmp_path), "--seeds", "2", "--rows", *rows, "--quiet"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    table = (tmp_path / "table.md").read_text()
    for row in rows:
        runs = results[row]["runs"]
        assert [r["seed"] for r in runs] == results[row]["seeds"] == [0, 1]
        acc = 100 * np.array([r["test_accuracy"] for r in runs])
        cells = _cells(table, reproduce.BEYOND[row][0])
        mean, sd = _mean_sd(cells[2])
        assert mean == pytest.approx(acc.mean(), abs=0.005 + 1e-9)
        assert float(sd) == pytest.approx(acc.std(ddof=1), abs=0.005 + 1e-9)
        assert cells[3] == f"{acc[0]:.2f}, {acc[1]:.2f} (seeds 0, 1)"
        assert cells[5] == f"`{row}`"
        assert cells[1] == reproduce.BEYOND[row][1]
        for r in runs:
            saved = json.loads((tmp_path / row / f"seed-{r['seed']}" / "metrics.json").read_text())
            assert r["test_accuracy"] == saved["final"]["test_accuracy"]
            config = json.loads((tmp_path / row / f"seed-{r['seed']}" / "model" / "config.json").read_text())
            assert config["run"]["seed"] == r["seed"]  # the seed reaches training
    assert "test_accuracy_single_view" in results["analog-deep"]["runs"][0]  # 5 views and the image alone

    # a third seed reuses the first two (the default for `beyond` is 3)
    def mtimes(row):
        return [(tmp_path / row / f"seed-{s}" / "metrics.json").stat().st_mtime for s in (0, 1)]

    before = mtimes("spiking-mnist")
    res = reproduce.reproduce_beyond(tmp_path, rows=["spiking-mnist"], progress=False, log=lambda s: None)
    assert mtimes("spiking-mnist") == before
    assert res["spiking-mnist"]["seeds"] == [0, 1, 2]
    assert (tmp_path / "spiking-mnist" / "seed-2" / "model" / "config.json").is_file()
    # other settings retrain every seed
    _tiny_runs(monkeypatch, mini, 150, 100)
    before = mtimes("analog-deep")
    reproduce.reproduce_beyond(tmp_path, rows=["analog-deep"], seeds=2, progress=False, log=lambda s: None)
    assert all(a != b for a, b in zip(mtimes("analog-deep"), before))
    with pytest.raises(ValueError, match="unknown rows"):
        reproduce.reproduce_beyond(tmp_path, rows=["analog-sigmoid"], log=lambda s: None)


@pytest.mark.parametrize(("what", "seeds"), [("paper", 5), ("beyond", 3)])
def test_reproduce_command_seeds_default_per_table(tmp_path, monkeypatch, what, seeds):
    from spikingjelly_ff.cli import main
    from spikingjelly_ff.runs import reproduce

    calls = []
    monkeypatch.setattr(reproduce, f"reproduce_{what}", lambda out, **kw: calls.append(kw))
    assert main(["reproduce", what, "--out", str(tmp_path), "--quiet"]) == 0
    assert calls[0]["seeds"] == seeds
    assert main(["reproduce", what, "--out", str(tmp_path), "--seeds", "2", "--quiet"]) == 0
    assert calls[1]["seeds"] == 2


def test_mean_sd_is_the_sample_sd():
    from spikingjelly_ff.runs.reproduce import mean_sd

    values = [0.91, 0.915, 0.902, 0.93]
    mean, sd = mean_sd(values)
    assert mean == pytest.approx(np.mean(values)) and sd == pytest.approx(np.std(values, ddof=1))
    assert mean_sd([0.5]) == (0.5, None)


def test_a_readout_row_reports_the_readout_accuracy(tmp_path, monkeypatch, mini):
    """A row whose model classifies by its readout (``train.readout``) tabulates the readout's
    accuracy, the class ``sjff eval`` gives, and keeps the goodness score's beside it."""
    from spikingjelly_ff.runs import reproduce

    _tiny_runs(monkeypatch, mini, 100, 60)
    row = "conv/spiking-readout-fashion"
    res = reproduce.reproduce_beyond(tmp_path, rows=[row], seeds=1, progress=False, log=lambda s: None)
    rec = res[row]["runs"][0]
    saved = json.loads((tmp_path / row / "seed-0" / "metrics.json").read_text())["final"]
    assert rec["test_accuracy"] == saved["readout_test_accuracy"] is not None
    assert rec["goodness_test_accuracy"] == saved["test_accuracy"]
