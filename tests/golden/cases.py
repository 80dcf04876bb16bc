"""What the golden test pins, computed through the library's public entry points only.

``all_values(work)`` trains every paper row (``spikingjelly_ff/configs/paper/*.yaml``) with a fixed seed on
a small MNIST subset, then scores, exports, runs the exports and takes one runtime learning
step; ``saved_values()`` loads the model files committed under ``tests/golden/saved/`` (written
in the format of the commit the golden values were made at) and scores them. Both return
``{key: numpy array}``. ``compute()`` runs both in a fresh interpreter with one BLAS thread;
``make_golden.py`` records its values, ``tests/test_golden.py`` compares them.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MINI = ROOT / "tests" / "data" / "mnist-mini"
SAVED = HERE / "saved"

ROWS = (
    "analog-sigmoid",
    "analog-symmetric",
    "hebbian-batched-sigmoid",
    "hebbian-batched-symmetric",
    "hebbian-online-sigmoid",
    "hebbian-online-symmetric",
)
TRAIN_LIMIT = 600  # training images per row (one epoch)
EVAL_LIMIT = 100  # test images of the accuracy
N_IMAGES = 20  # test images whose scores [N, C] are recorded
SAVED_ANALOG, SAVED_SPIKING = "analog-symmetric", "hebbian-online-symmetric"  # rows kept as files


def fingerprint() -> dict:
    """The numeric environment; exact hashes are only expected where it is the same.

    Libraries pick their kernels by CPU at run time, so the versions are not enough: numpy
    dispatches its loops to the best SIMD target the CPU has (an AVX-512 Ice Lake or Zen 4
    core gets other reductions than a Skylake one, with other last bits), and numba, BLAS and
    onnxruntime tune to the core as well (``host_cpu``: the core as LLVM names it, which is
    what numba compiles for)."""
    import onnxruntime
    import torch

    try:  # the compiled batch-1 kernel sums in its own order: another path, other last bits
        import llvmlite.binding
        import numba
        import numba.core.config

        numba_version = numba.__version__
        host_cpu = numba.core.config.CPU_NAME or llvmlite.binding.get_host_cpu_name()  # what numba targets
    except ImportError:
        numba_version, host_cpu = None, None
    return {
        "numba": numba_version,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numpy_simd": _numpy_simd(),
        "host_cpu": host_cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
    }


def _numpy_simd() -> list[str] | None:
    """The SIMD targets numpy dispatches its loops to on this CPU (``numpy.show_config``'s
    "SIMD Extensions" found; None where numpy does not say)."""
    try:
        found = np.show_config(mode="dicts").get("SIMD Extensions", {}).get("found")
    except (TypeError, ValueError):  # a numpy without the dicts mode
        return None
    return list(found) if found is not None else None


def sha256(a: np.ndarray) -> str:
    """sha256 of the raw C-order bytes (float32 stays float32)."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def score_images(n: int = N_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of the subset's test split, float32 ``[n, 784]`` in [0, 1], and labels."""
    from spikingjelly_ff.runs.data import load_split

    x, y = load_split(str(MINI), "test").take(n).to_tensors()
    return x.numpy(), y.numpy()


def learn_batch(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed learning batch: images ``[n, 784]``, shown labels ``[n]``, positive flags ``[n]``
    (every second sample is shown a wrong label)."""
    x, y = score_images(N_IMAGES + n)
    x, y = x[N_IMAGES:], y[N_IMAGES:]
    positive = (np.arange(n) % 2 == 0).astype(np.float32)
    shown = np.where(positive == 1, y, (y + 3 + np.arange(n)) % 10)
    return x, shown.astype(np.int64), positive


def row_config(row: str):
    from spikingjelly_ff.runs.config import load_config

    return load_config(
        f"paper/{row}",
        [
            f"data.dataset={MINI}",
            "data.download=false",
            "train.epochs=1",
            f"train.limit={TRAIN_LIMIT}",
            f"eval.limit={EVAL_LIMIT}",
            "threads=1",  # one intra-op thread: the same summation order on every run
        ],
    )


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _torch_scores(net, cfg, x: np.ndarray) -> np.ndarray:
    """All-label scores ``[N, C]`` of a freshly loaded torch model, the way evaluation scores
    it (spiking: the evaluation seed, membranes from rest)."""
    import torch

    xt = torch.from_numpy(x)
    if net.kind == "analog":
        with torch.no_grad():
            return _np(net.scores(xt))
    from spikingjelly_ff.learning.engine import SpikingScorer

    scorer = SpikingScorer(
        net, share_image_spikes=cfg.eval.share_image_spikes, seed=cfg.seed + 4, repeats=cfg.eval.repeats
    )
    return _np(scorer.scores(xt))


def _model_values(prefix: str, model_dir: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """State tensors, scores and evaluation predictions of a model directory (loaded twice:
    scoring a spiking model moves its membranes)."""
    import torch

    from spikingjelly_ff import load_model
    from spikingjelly_ff.runs.evaluate import scorer_for

    net, cfg, _ = load_model(model_dir)
    out = {f"{prefix}/state/{name}": _np(t) for name, t in net.state_dict().items()}
    out[f"{prefix}/scores"] = _torch_scores(net, cfg, x)
    net, cfg, _ = load_model(model_dir)
    out[f"{prefix}/predictions"] = _np(scorer_for(net, cfg, "cpu")(torch.from_numpy(x))).astype(np.int64)
    return out


def _analog_runtime_values(prefix: str, path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every ONNX output for ``x``, then two Hebbian steps (log-odds, weights, eligibility)."""
    from spikingjelly_ff.runtime import load_exported

    m = load_exported(path, threads=1)
    out = {f"{prefix}/onnx/{k}": np.asarray(v) for k, v in sorted(m.run(x).items())}
    lx, shown, positive = learn_batch(4)
    for step in range(2):
        out[f"{prefix}/learn{step}/logodds"] = m.learn(lx, shown, positive)
    out[f"{prefix}/learn/weights"] = np.stack(m.weights)
    out[f"{prefix}/learn/eligibility"] = np.stack(m.eligibility)
    out[f"{prefix}/learn/scores"] = m.scores(x)
    return out


def _spike_runtime_values(prefix: str, path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Runtime scores (seed 0), then one learning step of batch 1 (the on-line path) and two of
    batch 4 (the batched path), each from the loaded weights."""
    from spikingjelly_ff.runtime import load_exported

    m = load_exported(path)
    out = {
        f"{prefix}/spike/scores": m.scores(x, seed=0),
        f"{prefix}/spike/predict": m.predict(x, seed=0).astype(np.int64),
    }
    for n, steps in ((1, 1), (4, 2)):
        learner = m.copy()
        lx, shown, positive = learn_batch(n)
        for step in range(steps):
            out[f"{prefix}/learn_b{n}_{step}/logodds"] = learner.learn(lx, shown, positive, seed=11 + step)
        out[f"{prefix}/learn_b{n}/weights"] = np.stack([np.ascontiguousarray(w) for w in learner.weights])
        out[f"{prefix}/learn_b{n}/eligibility"] = np.stack([np.ascontiguousarray(e) for e in learner.eligibility])
    return out


def _train(row: str, run_dir: Path) -> dict[str, np.ndarray]:
    from spikingjelly_ff.runs.train import train

    metrics = train(row_config(row), run_dir, log=lambda s: None, progress=False)
    final = metrics["epochs"][-1]
    return {
        f"{row}/train_pn_accuracy": np.float64(final["train_pn_accuracy"]),
        f"{row}/test_accuracy": np.float64(final["test_accuracy"]),
    }


def _export(row: str, model_dir: Path, out_dir: Path) -> Path:
    """The row's export: ``.onnx`` (analog, no learning settings) or ``.nir`` (spiking)."""
    from spikingjelly_ff import load_model

    net, cfg, meta = load_model(model_dir)
    if net.kind == "analog":
        from spikingjelly_ff.export.onnx import analog_to_onnx

        return analog_to_onnx(net, out_dir / f"{row}.onnx")
    from spikingjelly_ff.export.spike import export_spike

    return export_spike(
        net,
        out_dir / f"{row}.nir",
        meta["image_shape"],
        hebbian=cfg.train.hebbian,
        evaluation=cfg.eval.params,
        name=cfg.name,
    )


def _seeded_single_thread(fn):
    """Run ``fn`` with fixed global seeds and one torch thread; restore the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    np.random.seed(0)
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def all_values(work: Path) -> dict[str, np.ndarray]:
    """Train, score, export and run every paper row under ``work`` (a scratch directory)."""

    def run() -> dict[str, np.ndarray]:
        x, _ = score_images()
        out: dict[str, np.ndarray] = {}
        for row in ROWS:
            out.update(_train(row, work / row))
            model_dir = work / row / "model"
            out.update(_model_values(row, model_dir, x))
            path = _export(row, model_dir, work)
            runtime = _analog_runtime_values if path.suffix == ".onnx" else _spike_runtime_values
            out.update(runtime(row, path, x))
        return out

    return _seeded_single_thread(run)


def write_saved(work: Path) -> None:
    """Write two rows trained by ``all_values(work)`` to ``tests/golden/saved/``: the spiking
    model directory (re-saved with the row's own dataset name, not the scratch path), its
    ``.nir`` export and the analog ``.onnx`` export."""
    from dataclasses import replace

    from spikingjelly_ff import load_model, save_model

    if SAVED.exists():
        shutil.rmtree(SAVED)
    SAVED.mkdir(parents=True)
    net, cfg, meta = load_model(work / SAVED_SPIKING / "model")
    cfg = replace(cfg, data=replace(cfg.data, dataset="mnist"))
    save_model(SAVED / "spiking-model", net, cfg, tuple(meta["image_shape"]))
    shutil.copy(work / f"{SAVED_SPIKING}.nir", SAVED / "spiking.nir")
    shutil.copy(work / f"{SAVED_ANALOG}.onnx", SAVED / "analog.onnx")


def saved_values() -> dict[str, np.ndarray]:
    """Load the committed model files with today's public loaders and score them."""

    def run() -> dict[str, np.ndarray]:
        x, _ = score_images()
        out = _model_values("saved/spiking-model", SAVED / "spiking-model", x)
        out.update(_spike_runtime_values("saved/spiking.nir", SAVED / "spiking.nir", x))
        out.update(_analog_runtime_values("saved/analog.onnx", SAVED / "analog.onnx", x))
        return out

    return _seeded_single_thread(run)


def compute(work: Path, write_saved_files: bool = False) -> dict[str, np.ndarray]:
    """``all_values`` then ``saved_values``, run in a fresh interpreter with one BLAS and one
    OpenMP thread (numpy's matmul rounds differently with another thread count) on the same
    library as this process; ``write_saved_files`` rewrites ``saved/`` between the two."""
    import spikingjelly_ff

    library = str(Path(spikingjelly_ff.__file__).resolve().parents[1])
    paths = [library, str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = [sys.executable, "-m", "golden.cases", str(work)] + (["--write-saved"] if write_saved_files else [])
    subprocess.run(args, env=env, check=True, cwd=work)  # not the caller's cwd: it may hold another library
    with np.load(work / "values.npz") as z:
        return {k: z[k] for k in z.files}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    values = all_values(out)
    if "--write-saved" in sys.argv:
        write_saved(out)
    values.update(saved_values())
    np.savez(out / "values.npz", **values)
