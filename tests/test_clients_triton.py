"""Compatibility with a client nobody here wrote: tritonclient[grpc] against our server.

tritonclient needs protobuf < 7, which clashes with our stubs, so it runs from its own virtual
environment (created once under ~/.cache/spikingjelly-ff/tritonclient-venv, or
$SJFF_TRITON_VENV) in a subprocess. Creating it needs the package index; if that fails the
test is skipped, unless SJFF_REQUIRE_TRITON=1 makes it fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import serving_utils as su
from sjff_server.harness import ServerProcess

from spikingjelly_ff.runtime import load_exported

VENV = Path(os.environ.get("SJFF_TRITON_VENV", Path.home() / ".cache" / "spikingjelly-ff" / "tritonclient-venv"))
PROBE = Path(__file__).with_name("triton_probe.py")


def _python() -> Path:
    return VENV / "bin" / "python"


@pytest.fixture(scope="module")
def triton_python():
    ok = (
        _python().exists()
        and subprocess.run([str(_python()), "-c", "import tritonclient.grpc"], capture_output=True).returncode == 0
    )
    if not ok:
        try:
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True, timeout=300
            )
            pip = [str(_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
            subprocess.run(
                [*pip, "tritonclient[grpc]", "protobuf<7", "numpy"], check=True, capture_output=True, timeout=900
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            out = getattr(exc, "stderr", b"") or b""
            if os.environ.get("SJFF_REQUIRE_TRITON") == "1":
                pytest.fail(f"cannot create the tritonclient virtualenv: {out.decode(errors='replace')[-2000:]}")
            pytest.skip(
                f"cannot create the tritonclient virtualenv (no package index?): {out.decode(errors='replace')[-300:]}"
            )
    return _python()


def test_tritonclient_reaches_our_server(triton_python, sjff_models, tmp_path, mnist_samples):
    images, labels = mnist_samples
    n = 16
    np.save(tmp_path / "images.npy", images[:n])
    root = su.make_repository(tmp_path / "repo", {"mnist": sjff_models["analog"]})
    with ServerProcess(root, metrics=False) as srv:
        out = tmp_path / "triton.json"
        p = subprocess.run(
            [str(triton_python), str(PROBE), srv.target, "mnist", str(tmp_path / "images.npy"), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr[-4000:]
    r = json.loads(out.read_text())
    ref = load_exported(sjff_models["analog"], threads=1).run(su.as_float(images[:n]))
    assert r["live"] and r["ready"] and r["model_ready"]
    assert r["server"]["name"] == "spikingjelly-ff"
    md = r["metadata"]
    assert md["name"] == "mnist" and md["inputs"][0]["name"] == "images" and md["inputs"][0]["shape"] == ["-1", "784"]
    assert r["fp32"]["label"] == ref["label"].tolist() and r["fp32"]["id"] == "fp32"
    np.testing.assert_allclose(np.array(r["fp32"]["scores"]), ref["scores"], rtol=1e-5, atol=1e-5)
    assert r["uint8"]["label"] == ref["label"].tolist()
    assert r["uint8"]["outputs"] == sorted(["scores", "probability", "label", "goodness"])
    assert [int(row[0].split(":")[1]) for row in r["classification"]] == ref["label"].tolist()
    assert r["unknown_model"] == "StatusCode.NOT_FOUND" and r["bad_shape"] == "StatusCode.INVALID_ARGUMENT"
    assert {int(k): v for k, v in r["stream"].items()} == dict(enumerate(ref["label"].tolist()))
    assert (np.array(r["fp32"]["label"]) == labels[:n]).mean() > 0.6  # correct predictions, not just equal ones
