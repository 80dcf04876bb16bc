#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool): the CuPy-vs-torch
# equivalence tests and the GPU throughput benchmark. Needs torch + CuPy there (the image has
# both); pure-Python packages it lacks (spikingjelly, loguru, nir, nirtorch) travel as wheels
# in .whl/ (see docs/gpu.md for the download command).
# With MNIST reachable (SJFF_DATA_DIR or the cache; e.g. the gzipped IDX files in .mnist/mnist,
# carried too) it also trains one epoch of the paper's batched P_sym row with each backend.
#   run: bash benchmarks/gpu_check.sh     (carry: [".whl", ".mnist"])
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:$PWD/server:$PWD/clients/python:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
[ -d .mnist ] && export SJFF_DATA_DIR="${SJFF_DATA_DIR:-$PWD/.mnist}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cupy', cupy.__version__)"
echo "== CuPy kernels vs torch (tests/library/test_kernels.py)"
python3 -m pytest -v -p no:cacheprovider tests/library/test_kernels.py
rc=$?
echo "== GPU throughput"
python3 benchmarks/gpu_speed.py ${OUT:+--json "$OUT/gpu_speed.json"} || rc=1
echo "== One epoch of the paper's batched P_sym row on MNIST (spikingjelly_ff/configs/paper), torch vs cupy"
if python3 -c "from spikingjelly_ff.runs.data import find_dataset; find_dataset('mnist')" 2>/dev/null; then
  for b in torch cupy; do
    python3 -m spikingjelly_ff.cli train paper/hebbian-batched-symmetric --set device=cuda \
      --set backend=$b --set train.epochs=1 --out "/tmp/sjff-gpu-$b" --quiet --json || rc=1
  done
else
  echo "skipped: MNIST not found (set SJFF_DATA_DIR)"
fi
exit $rc
