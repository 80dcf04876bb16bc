"""Install spikingjelly-ff and its dependencies into the current Python environment.

Why not plain ``pip install -e .[dev]``: SpikingJelly 2.x declares torchvision and torchaudio
as hard dependencies, and resolving them replaces a CPU torch with a multi-GB CUDA build.
The library never imports either, so this script installs SpikingJelly without its
dependencies, then everything else our pyproject.toml lists (one source of truth), then the
package itself in editable mode.

    python scripts/install.py [--extras dev] [--torch 2.13.0]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# SpikingJelly's own dependencies that its activation_based package really imports.
SPIKINGJELLY_DEPS = ["loguru>=0.7,<1", "tensorboard", "scipy", "matplotlib", "packaging", "requests", "h5py"]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    reqs: list[str] = list(project["dependencies"])
    todo = list(extras)
    seen: set[str] = set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in optional.get(extra, []):
            m = re.fullmatch(r"spikingjelly-ff\[(.*)\]", r)
            if m:
                todo += [e.strip() for e in m.group(1).split(",")]
            else:
                reqs.append(r)
    return [r for r in reqs if not r.startswith(("spikingjelly>", "spikingjelly=", "torch>", "torch="))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", default="dev", help="comma-separated extras of pyproject.toml (default: dev)")
    ap.add_argument("--torch", default="2.13.0", help="torch version to install when torch is missing")
    args = ap.parse_args()
    if importlib.util.find_spec("torch") is None:
        pip(f"torch=={args.torch}")
    pip("--no-deps", "spikingjelly>=2.0,<3")
    extras = [e for e in args.extras.split(",") if e]
    pip(*SPIKINGJELLY_DEPS, *requirements(extras))
    pip("--no-deps", "--no-build-isolation", "-e", str(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
