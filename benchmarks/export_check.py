"""Exports measured on the MNIST test set: onnxruntime vs torch, the torch-free runtime vs
torch, runtime speed, and the runtime's install size without torch.

    python benchmarks/export_check.py --analog RUN/model --spiking RUN/model [--install-size]

Prints one table; every figure is computed in this run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, save_json  # noqa: E402

from spikingjelly_ff.learning.engine import SpikingScorer, SpikingTrainer  # noqa: E402
from spikingjelly_ff.runs.checkpoint import load_model  # noqa: E402
from spikingjelly_ff.runs.data import load_split  # noqa: E402
from spikingjelly_ff.simulation import run_layer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def analog_rows(model_dir: str, x: torch.Tensor, y: torch.Tensor, tmp: Path) -> tuple[list, dict]:
    import onnxruntime as ort

    from spikingjelly_ff.export.onnx import analog_to_onnx

    net, cfg, _ = load_model(model_dir)
    path = analog_to_onnx(net, tmp / "analog.onnx")
    opts = ort.SessionOptions()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x.numpy()})))
    ort_s = time.perf_counter() - t
    with torch.no_grad():
        t = time.perf_counter()
        scores = net.view_scores(x)  # summed over the test views, if the model has any
        torch_s = time.perf_counter() - t
        prob = torch.sigmoid(net.scores(x) if net.shift_views else scores).numpy()  # the image itself
    res = {
        "probability_max_abs_error": float(np.abs(out["probability"] - prob).max()),
        "scores_max_rel_error": float((np.abs(out["scores"] - scores.numpy()) / (np.abs(scores.numpy()) + 1e-6)).max()),
        "identical_predictions": float((out["label"] == scores.argmax(1).numpy()).mean()),
        "accuracy_onnxruntime": float((out["label"] == y.numpy()).mean()),
        "accuracy_torch": float((scores.argmax(1) == y).float().mean()),
        "onnxruntime_images_per_second": len(x) / ort_s,
        "torch_images_per_second": len(x) / torch_s,
    }
    rows = [
        ["analog ONNX", "max |P_ort - P_torch|", f"{res['probability_max_abs_error']:.2e}"],
        ["analog ONNX", "max relative error of scores", f"{res['scores_max_rel_error']:.2e}"],
        ["analog ONNX", "identical predictions", f"{100 * res['identical_predictions']:.2f}% of {len(x)}"],
        [
            "analog ONNX",
            "accuracy onnxruntime / torch",
            f"{100 * res['accuracy_onnxruntime']:.2f}% / {100 * res['accuracy_torch']:.2f}%",
        ],
        [
            "analog ONNX",
            "images/s onnxruntime / torch (all labels)",
            f"{res['onnxruntime_images_per_second']:,.0f} / {res['torch_images_per_second']:,.0f}",
        ],
    ]
    return rows, res


def spiking_rows(model_dir: str, x: torch.Tensor, y: torch.Tensor, tmp: Path, images: int) -> tuple[list, dict]:
    import onnxruntime as ort

    from spikingjelly_ff.export.onnx import spiking_to_onnx
    from spikingjelly_ff.export.spike import export_spike
    from spikingjelly_ff.runtime import SpikeModel

    net, cfg, meta = load_model(model_dir)
    g = torch.Generator().manual_seed(0)
    xs, ys = x[:images], y[:images]
    spikes = net.encode(net.rates(xs, ys), g)  # the correct label, [T, N, D']
    # ONNX Scan vs torch on identical input spikes
    path = spiking_to_onnx(net, tmp / "spiking.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"spikes": spikes.numpy(), **{f"v{i}": np.zeros((images, w), np.float32) for i, w in enumerate(net.widths)}}
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    ref = run_layer(spikes, net.layers[0].weight.data, torch.zeros(images, net.widths[0]), net.dynamics)
    onnx_same = float((out["spikes_0"] == ref[0].numpy()).mean())
    # the torch-free runtime on the same spikes, every label
    art = export_spike(
        net,
        tmp / "model.nir",
        meta["image_shape"],
        hebbian=cfg.train.hebbian,
        evaluation=cfg.eval.params,
        name=cfg.name,
    )
    rt = SpikeModel.load(art)
    all_spikes = torch.stack([net.encode(net.rates(xs[:200], torch.full((200,), c)), g) for c in range(10)])
    net.layers[0].neuron.v = 0.0
    torch_traces = SpikingScorer(net).layer_outputs(xs[:200], all_spikes)
    rt_traces = rt.layer_outputs_from_spikes(all_spikes.numpy())
    rt_same = float(np.mean([np.array_equal(a.numpy(), b) for a, b in zip(torch_traces, rt_traces)]))
    # accuracy and speed of the runtime (its own numpy random stream)
    xn = x.numpy()
    t = time.perf_counter()
    pred = np.concatenate([rt.predict(xn[i : i + 500], seed=i) for i in range(0, len(xn), 500)])
    rt_ips = len(xn) / (time.perf_counter() - t)
    scorer = SpikingScorer(net, seed=0)
    t = time.perf_counter()
    torch_pred = torch.cat([scorer.predict(x[i : i + 1000]) for i in range(0, len(x), 1000)]).numpy()
    torch_ips = len(xn) / (time.perf_counter() - t)
    # on-line learning speed of the runtime: single samples and batches of 50
    learn = rt.copy()
    n1 = 300
    t = time.perf_counter()
    for i in range(n1):
        learn.learn(xn[i : i + 1], y.numpy()[i : i + 1], np.ones(1), seed=i)
    upd1 = n1 / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, 1500, 50):
        learn.learn(xn[i : i + 50], y.numpy()[i : i + 50], np.ones(50), seed=i)
    upd50 = 30 / (time.perf_counter() - t)
    # torch-side online training speed for comparison
    trainer = SpikingTrainer(net, cfg.train.hebbian)
    t = time.perf_counter()
    for i in range(n1):
        trainer.train_batch(x[i : i + 1], y[i : i + 1], torch.ones(1))
    torch_upd1 = n1 / (time.perf_counter() - t)
    res = {
        "onnx_identical_spikes": onnx_same,
        "runtime_identical_traces": rt_same,
        "runtime_accuracy": float((pred == y.numpy()).mean()),
        "torch_accuracy": float((torch_pred == y.numpy()).mean()),
        "runtime_images_per_second": rt_ips,
        "torch_images_per_second": torch_ips,
        "runtime_updates_per_second_batch1": upd1,
        "runtime_updates_per_second_batch50": upd50,
        "torch_updates_per_second_batch1": torch_upd1,
    }
    rows = [
        [
            "spiking ONNX (Scan)",
            "identical spikes, same input spikes",
            f"{100 * onnx_same:.4f}% of {spikes.numel() // spikes.shape[-1] * net.widths[0]:,}",
        ],
        [
            "spike runtime (numpy)",
            "identical final traces, all labels, same input spikes",
            f"{100 * rt_same:.0f}% ({len(torch_traces)} layer(s) x 200 images x 10 labels)",
        ],
        [
            "spike runtime (numpy)",
            "accuracy runtime / torch (own random streams)",
            f"{100 * res['runtime_accuracy']:.2f}% / {100 * res['torch_accuracy']:.2f}%",
        ],
        ["spike runtime (numpy)", "inference images/s runtime / torch engine", f"{rt_ips:,.0f} / {torch_ips:,.0f}"],
        ["spike runtime (numpy)", "Hebbian updates/s, batch 1 (runtime / torch)", f"{upd1:,.0f} / {torch_upd1:,.0f}"],
        ["spike runtime (numpy)", "Hebbian updates/s, batch 50 (samples/s)", f"{upd50:,.1f} ({50 * upd50:,.0f})"],
    ]
    return rows, res


def install_size() -> tuple[list, dict]:
    """Fresh venv with numpy + h5py + this package (no dependencies): size, and a check that
    the runtime imports and runs there without torch."""
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = venv / "bin" / "python"
        before = _du(venv)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy", "h5py"], check=True)
        # the wheel is built by this interpreter (it has the build backend); the fresh venv
        # only installs it, as an edge device would install a published wheel
        wheels = Path(tmp) / "wheels"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(wheels),
                str(ROOT),
            ],
            check=True,
        )
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels.glob("*.whl"))], check=True
        )
        size = _du(venv) - before
        probe = subprocess.run(
            [
                str(py),
                "-c",
                "import importlib.util, spikingjelly_ff.runtime as r; print(importlib.util.find_spec('torch') is None)",
            ],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
    ok = probe.stdout.strip() == "True"
    res = {"runtime_install_mb": size / 1e6, "imports_without_torch": ok}
    return [
        [
            "spike runtime (numpy)",
            "install size: numpy + h5py + spikingjelly-ff, no torch",
            f"{size / 1e6:.0f} MB (torch absent: {ok})",
        ]
    ], res


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analog", help="analog model directory")
    ap.add_argument("--spiking", help="spiking model directory")
    ap.add_argument("--images", type=int, default=1000, help="images for the fixed-spike comparisons")
    ap.add_argument("--install-size", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    x, y = load_split("mnist", "test").to_tensors()
    rows, out = [], {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        if args.analog:
            r, res = analog_rows(args.analog, x, y, Path(tmp))
            rows += r
            out["analog"] = res
        if args.spiking:
            r, res = spiking_rows(args.spiking, x, y, Path(tmp), args.images)
            rows += r
            out["spiking"] = res
    if args.install_size:
        r, res = install_size()
        rows += r
        out["install"] = res
    print_table(f"Exports on the MNIST test set ({len(x)} images), {machine()}", ["export", "measure", "value"], rows)
    save_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
