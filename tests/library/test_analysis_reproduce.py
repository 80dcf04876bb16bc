"""Latent analysis metrics and the one-command reproduction of the paper's table."""

from __future__ import annotations

import math

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


def test_reproduce_command_writes_the_table(tmp_path, monkeypatch, mini):
    from spikingjelly_ff.runs import reproduce

    monkeypatch.setattr(
        reproduce,
        "_overrides",
        lambda e, lim, t: [f"data.dataset={mini}", "train.epochs=1", "train.limit=300", "eval.limit=200"],
    )
    res = reproduce.reproduce_paper(
        tmp_path, rows=["analog-symmetric", "hebbian-online-symmetric"], progress=False, log=lambda s: None
    )
    table = (tmp_path / "table.md").read_text()
    assert "| Analog P_sym | 94.87 |" in table and "| Online Hebbian P_sym | 94.33 |" in table
    assert (tmp_path / "latents_tsne.png").stat().st_size > 10_000
    assert set(res) == {"analog-symmetric", "hebbian-online-symmetric"}
    assert all(0 <= r["hoyer"] <= 1 and 0 <= r["separability"] <= 1 for r in res.values())
    # a second call reuses the finished runs
    mtime = (tmp_path / "analog-symmetric" / "metrics.json").stat().st_mtime
    reproduce.reproduce_paper(tmp_path, rows=["analog-symmetric"], progress=False, log=lambda s: None)
    assert (tmp_path / "analog-symmetric" / "metrics.json").stat().st_mtime == mtime
    with pytest.raises(ValueError, match="unknown rows"):
        reproduce.reproduce_paper(tmp_path, rows=["resnet"], log=lambda s: None)
