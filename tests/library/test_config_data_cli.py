"""Configs, datasets and the command line: the contract later issues rely on."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spikingjelly_ff.cli import main
from spikingjelly_ff.functional.schedule import schedule_factor, warmup_factor
from spikingjelly_ff.runs import data
from spikingjelly_ff.runs.config import (
    CONFIG_DIR,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    shipped_configs,
)
from spikingjelly_ff.runs.steps import optimizer_lr

ROOT = Path(__file__).resolve().parents[2]


# -- config ------------------------------------------------------------------------------------


def test_shipped_configs_load():
    assert CONFIG_DIR == ROOT / "spikingjelly_ff" / "configs"  # package data: one copy, shipped
    assert [n for n in shipped_configs() if n.startswith("paper/")] == [
        "paper/analog-sigmoid",
        "paper/analog-symmetric",
        "paper/hebbian-batched-sigmoid",
        "paper/hebbian-batched-symmetric",
        "paper/hebbian-online-sigmoid",
        "paper/hebbian-online-symmetric",
    ]
    for name in shipped_configs():
        assert load_config(name) == load_config(CONFIG_DIR / f"{name}.yaml")
    cfg = load_config("paper/analog-sigmoid")
    assert cfg.model.layers == [200] and cfg.model.probability.alpha == 1.0 and cfg.model.probability.theta == 3.5
    assert cfg.train.batch_size == 50 and cfg.train.epochs == 10 and cfg.model.embedding.bits == 100


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.foo=1"], "unknown config key model.foo"),
        (["train.epochs=ten"], "train.epochs must be an integer"),
        (["model.probability.kind=softmax"], "model.probability.kind must be one of"),
        (["model.layers=[201]", "model.probability.kind=symmetric"], "widths must be even"),
        (["model.kind=spiking", "train.learner=local-loss"], "train.learner=hebbian"),
        (["train.epochs"], "expects key=value"),
        (["model.neuron.beta=1.5"], "beta must lie in"),
        (["model.shift_views=-1"], "shift_views must be >= 0"),
        (["model.kind=spiking", "train.learner=hebbian", "model.shift_views=1"], "and spiking conv models only"),
        (["train.optimizer.warmup=1.0"], r"warmup is a fraction of the run in \[0, 1\)"),
        (["train.optimizer.warmup=-0.1"], r"warmup is a fraction of the run in \[0, 1\)"),
        (["train.checkpoint_batches=-1"], "train.checkpoint_batches must be >= 0"),
        (["seed=-1"], r"seed must lie in \[0, 2\*\*63\)"),
        ([f"seed={2**63}"], r"seed must lie in \[0, 2\*\*63\)"),
    ],
)
def test_bad_configs_give_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("paper/analog-symmetric", overrides)


def test_warmup_ramps_the_rate_then_hands_over_to_the_schedule():
    o = load_config("paper/analog-symmetric", ["train.optimizer.lr=0.01", "train.optimizer.schedule=cosine"])
    o = o.train.optimizer
    assert [optimizer_lr(o, p) for p in (0.0, 0.5)] == [0.01, pytest.approx(0.005)]  # no warm-up: the schedule alone
    o.warmup = 0.1
    assert optimizer_lr(o, 0.0) == 0.0
    assert optimizer_lr(o, 0.05) == pytest.approx(0.5 * 0.01 * schedule_factor("cosine", 0.05))
    assert optimizer_lr(o, 0.1) == pytest.approx(0.01 * schedule_factor("cosine", 0.1))
    assert optimizer_lr(o, 0.5) == pytest.approx(0.005)
    rates = [optimizer_lr(o, i / 100) for i in range(11)]
    assert rates == sorted(rates)  # rises through the ramp
    with pytest.raises(ValueError, match="warmup must be a fraction"):
        warmup_factor(1.0, 0.5)


def test_overrides_parse_yaml_values():
    d = apply_overrides({}, ["model.layers=[10, 20]", "model.probability.clip=1e-5", "train.limit=null", "name=x=y"])
    assert d["model"]["layers"] == [10, 20] and d["name"] == "x=y"
    assert config_from_dict(d).model.probability.clip == 1e-5


# -- data --------------------------------------------------------------------------------------


def test_idx_round_trip_and_validation(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        data.write_idx(tmp_path / name, arr)
        assert np.array_equal(data.read_idx(tmp_path / name), arr)
    (tmp_path / "short").write_bytes((tmp_path / "a-idx3-ubyte").read_bytes()[:-3])
    with pytest.raises(data.DataError, match="expected"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(data.DataError, match="not an IDX"):
        data.read_idx(tmp_path / "junk")


def test_subset_is_real_mnist(mini):
    s = data.load_split(str(mini), "train")
    assert s.images.shape == (2000, 784) and s.shape == (28, 28)
    assert np.bincount(s.labels, minlength=10).min() > 150
    x, y = s.to_tensors()
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0


def test_missing_dataset_error_lists_places(tmp_path, monkeypatch):
    monkeypatch.setenv("SJFF_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(
        data.DataError, match=r"fashion-mnist not found \(looked in .*env.*cache.*\); run `sjff data fetch"
    ):
        data.find_dataset("fashion-mnist")


def test_fetch_tries_every_source_and_verifies(tmp_path, monkeypatch, mini):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SJFF_DATA_DIR", raising=False)
    # A fake dataset whose checksums are those of the subset; the "Debian" directory holds it.
    digests = {f: __import__("hashlib").sha256(data._read_bytes(data._file(mini, f))).hexdigest() for f in data.FILES}
    fake = data.KnownDataset("mini", digests, ("http://127.0.0.1:9/none",), npm=None, debian=str(mini))
    monkeypatch.setitem(data.DATASETS, "mini", fake)
    path = data.fetch("mini", log=lambda s: None)
    assert path == tmp_path / "cache" / "spikingjelly-ff" / "mini"
    assert len(data.load_split("mini", "test")) == 500
    # Corrupt source: checksum refused; no source works: one error naming all of them.
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in data.FILES:
        raw = data._read_bytes(data._file(mini, f))
        (bad / f).write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    monkeypatch.setitem(
        data.DATASETS, "mini2", data.KnownDataset("mini2", digests, ("http://127.0.0.1:9/none",), debian=str(bad))
    )
    with pytest.raises(data.DataError) as err:
        data.fetch("mini2", log=lambda s: None)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "download from http://127.0.0.1:9/none" in msg
    # A Debian package that is not installed: the error names the package that provides it.
    absent = data.KnownDataset("mini3", digests, (), debian=str(tmp_path / "none"), debian_package="dataset-mini3")
    monkeypatch.setitem(data.DATASETS, "mini3", absent)
    with pytest.raises(data.DataError, match=r"not there; `apt-get install dataset-mini3` provides it"):
        data.fetch("mini3", log=lambda s: None)


def test_two_processes_fetching_at_once_both_succeed(tmp_path, monkeypatch, mini):
    """The ranks of `sjff train --nproc 2` on a fresh machine fetch the same dataset at once.
    Interleave two writers deterministically: the second writes and renames every file while
    the first is between writing its first file and renaming it. Each must rename its own temp
    file (a shared `NAME.part` was renamed away under the first one, which then failed), and
    no temp file may be left behind."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SJFF_DATA_DIR", raising=False)
    digests = {f: __import__("hashlib").sha256(data._read_bytes(data._file(mini, f))).hexdigest() for f in data.FILES}
    monkeypatch.setitem(data.DATASETS, "mini", data.KnownDataset("mini", digests, (), npm=None, debian=str(mini)))
    files = data._from_directory(mini)
    target = tmp_path / "cache" / "spikingjelly-ff" / "mini"
    real_replace = os.replace
    interleaved = []

    def replace(src, dst):
        if not interleaved:  # the first writer's first rename: the other process runs in between
            interleaved.append(True)
            data._verify_into(files, data.DATASETS["mini"], target)
        real_replace(src, dst)

    monkeypatch.setattr(data.os, "replace", replace)
    data._verify_into(files, data.DATASETS["mini"], target)
    assert interleaved
    assert sorted(p.name for p in target.iterdir()) == sorted(data.FILES)
    fetched, source = data.load_split("mini", "train"), data.load_split(str(mini), "train")
    assert np.array_equal(fetched.images, source.images) and np.array_equal(fetched.labels, source.labels)


def test_gzipped_debian_layout_is_read(tmp_path):
    """Debian's dataset-fashion-mnist ships gzipped IDX files; they are found and decompressed."""
    arr = np.zeros((3, 28, 28), np.uint8)
    for f in data.FILES:
        payload = arr if "images" in f else np.array([1, 2, 3], np.uint8)
        data.write_idx(tmp_path / (f + ".gz"), payload)
    raw = data._from_directory(tmp_path)
    assert set(raw) == set(data.FILES) and gzip.compress(raw[data.FILES[1]])


# -- command line ------------------------------------------------------------------------------


def _sjff(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "spikingjelly_ff.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_cli_train_eval_export_analyze(tmp_path, mini):
    run = tmp_path / "run"
    proc = _sjff(
        "train",
        "spikingjelly_ff/configs/paper/analog-symmetric.yaml",
        "--out",
        str(run),
        "--quiet",
        "--json",
        "--set",
        f"data.dataset={mini}",
        "--set",
        "train.epochs=2",
        "--set",
        "seed=3",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert {"train_pn_accuracy", "test_accuracy", "train_seconds"} <= set(metrics["epochs"][-1])
    assert (run / "model" / "model.safetensors").is_file()
    assert json.loads((run / "model" / "config.json").read_text())["run"]["seed"] == 3
    ev = _sjff("eval", str(run / "model"), "--dataset", str(mini), "--json")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert set(result) >= {"accuracy", "n", "seconds"} and result["n"] == 500
    assert abs(result["accuracy"] - metrics["final"]["test_accuracy"]) < 1e-9
    onnx_path = tmp_path / "m.onnx"
    assert _sjff("export", str(run / "model"), "--format", "onnx", "--out", str(onnx_path)).returncode == 0
    assert onnx_path.stat().st_size > 100_000
    an = _sjff(
        "analyze",
        str(run / "model"),
        "--dataset",
        str(mini),
        "--limit",
        "300",
        "--json",
        "--plot",
        str(tmp_path / "t.png"),
    )
    assert an.returncode == 0, an.stderr
    res = json.loads(an.stdout)
    assert 0 <= res["hoyer"] <= 1 and 0 <= res["separability"] <= 1
    assert len(res["silent"]) == len(res["widths"]) and all(0 <= k <= w for k, w in zip(res["silent"], res["widths"]))
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_is_reproducible_from_the_seed(tmp_path, mini):
    from spikingjelly_ff.runs.train import train

    cfg = load_config(
        "paper/hebbian-online-symmetric",
        [f"data.dataset={mini}", "train.epochs=1", "train.limit=200", "eval.limit=100"],
    )
    a = train(cfg, tmp_path / "a", log=lambda s: None, progress=False)
    b = train(cfg, tmp_path / "b", log=lambda s: None, progress=False)
    wa = (tmp_path / "a" / "model" / "model.safetensors").read_bytes()
    wb = (tmp_path / "b" / "model" / "model.safetensors").read_bytes()
    assert wa == wb and a["final"]["test_accuracy"] == b["final"]["test_accuracy"]


def test_metrics_are_written_after_every_epoch(tmp_path, mini):
    """A long run can be followed, and an interrupted one keeps its record: metrics.json holds
    every finished epoch (no ``final`` section yet) before the next one starts."""
    from spikingjelly_ff.runs.train import train

    cfg = load_config(
        "paper/hebbian-online-symmetric",
        [f"data.dataset={mini}", "train.epochs=2", "train.limit=100", "eval.limit=50", "train.eval_every=1"],
    )
    seen = []

    def log(line: str) -> None:
        if line.startswith("epoch "):
            seen.append(json.loads((tmp_path / "metrics.json").read_text()))

    metrics = train(cfg, tmp_path, log=log, progress=False)
    assert [len(m["epochs"]) for m in seen] == [1, 2] and all("final" not in m for m in seen)
    assert seen[0]["epochs"][0] == metrics["epochs"][0]
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics  # then the whole record
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["train", "paper/analog-sigmoid", "--out", "{tmp}/x", "--set", "model.bogus=1"],
            "unknown config key model.bogus",
        ),
        (["train", "nope.yaml", "--out", "{tmp}/x"], "config nope.yaml not found"),
        (
            ["train", "paper/analog-sigmoid", "--out", "{tmp}/x", "--set", "data.dataset={tmp}/none"],
            "unknown dataset",
        ),
        (["eval", "{tmp}"], "not a model directory"),
        (["eval", "{run}", "--dataset", "{tmp}/odd"], "pixels; the model expects 784"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, analog_run, args, message):
    odd = tmp_path / "odd"
    odd.mkdir()
    for f in data.FILES:
        payload = np.zeros((4, 10, 10), np.uint8) if "images" in f else np.zeros(4, np.uint8)
        data.write_idx(odd / f, payload)
    args = [a.format(tmp=tmp_path, run=analog_run / "model") for a in args]
    proc = _sjff(*args, cwd=ROOT)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("sjff: error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_cli_debug_shows_traceback(tmp_path):
    assert main(["eval", str(tmp_path)]) == 2
    with pytest.raises(Exception, match="not a model directory"):
        main(["--debug", "eval", str(tmp_path)])


def test_shift_views_train_eval_and_export_agree(tmp_path, mini):
    """A model trained with model.shift_views reports both accuracies; `sjff eval --views`
    reproduces each, and its ONNX export predicts exactly like the torch classifier."""
    import onnxruntime as ort

    from spikingjelly_ff.runs.data import load_split
    from spikingjelly_ff.runs.evaluate import evaluate_model
    from spikingjelly_ff.runs.train import train

    cfg = load_config(
        "paper/analog-symmetric",
        [f"data.dataset={mini}", "train.epochs=1", "train.limit=300", "model.shift_views=1"],
    )
    final = train(cfg, tmp_path / "r", log=lambda s: None, progress=False)["final"]
    assert {"test_accuracy", "test_accuracy_single_view"} <= set(final)
    model = tmp_path / "r" / "model"
    assert evaluate_model(model)["accuracy"] == final["test_accuracy"]
    assert evaluate_model(model, shift_views=0)["accuracy"] == final["test_accuracy_single_view"]
    assert main(["export", str(model), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    x, _ = load_split(str(mini), "test").to_tensors()
    from spikingjelly_ff.runs.checkpoint import load_model

    net, _, _ = load_model(model)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(["label"], {"images": x.numpy()})[0], net.predict(x).numpy())
    proc = _sjff("eval", str(model), "--views", "-1", cwd=ROOT)
    assert proc.returncode == 2 and ">= 0" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "paper/analog-sigmoid", "--nproc", "0"], "--nproc: must be an integer >= 1, got '0'"),
        (["train", "paper/analog-sigmoid", "--nproc", "two"], "--nproc: must be an integer >= 1, got 'two'"),
        (["train", "paper/analog-sigmoid", "--dist-timeout", "nan"], "--dist-timeout: must be a number of seconds > 0"),
        (["train", "paper/analog-sigmoid", "--dist-timeout", "-1"], "--dist-timeout: must be a number of seconds > 0"),
        (["reproduce", "paper", "--seeds", "0"], "--seeds: must be an integer >= 1, got '0'"),
    ],
)
def test_cli_counts_and_timeouts_are_validated(tmp_path, capsys, args, message):
    """A process count, seed count or timeout out of range is one argparse error (exit 2), and
    nothing is trained (a run with --nproc 0 used to train in one process)."""
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dtype", ["int64", "uint8"])
def test_one_sample_make_samples_equals_the_batch_path(dtype):
    """On-line training's one-row shortcut draws the same numbers in the same order as the
    tensor path, so a seeded run makes the same samples either way."""
    import torch

    from spikingjelly_ff.runs.samples import make_samples

    g_fast, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for i in range(500):
        labels = torch.tensor([i % 10], dtype=getattr(torch, dtype))
        rows, shown, y = make_samples(labels, "mixed", 10, g_fast)
        # the batch path, as make_samples runs it for n > 1
        wrong = (labels + torch.randint(1, 10, (1,), generator=g_ref)) % 10
        y_ref = (torch.rand(1, generator=g_ref) < 0.5).float()
        shown_ref = torch.where(y_ref.bool(), labels, wrong)
        assert torch.equal(rows, torch.arange(1))
        assert torch.equal(shown, shown_ref) and shown.dtype == shown_ref.dtype
        assert torch.equal(y, y_ref) and y.dtype == y_ref.dtype
