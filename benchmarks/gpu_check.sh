#!/usr/bin/env bash
# One call on a lent GPU machine (the workplace's `device` tool): the CuPy-vs-torch
# equivalence tests, the GPU throughput benchmark and, with MNIST, the paper's batched row
# through `sjff train` on each path. Needs torch + CuPy there (the image has both);
# pure-Python packages it lacks (spikingjelly, loguru, nir, nirtorch) travel as wheels in .whl/
# (see docs/gpu.md for the download command), MNIST as gzipped IDX files in .mnist/mnist.
#   run: bash benchmarks/gpu_check.sh [tests] [train] [speed]     (carry: [".whl", ".mnist"])
# Parts named on the command line run alone (default: all three, in this order: the tests, the
# paper's row through sjff train, the throughput benchmarks), so that a short device lease can
# take the first two in one call and the third in another. Every step has its own time limit,
# so that a hung kernel cannot eat the machine's time.
set -uo pipefail
cd "$(dirname "$0")/.."
parts="${*:-tests train speed}"
for part in $parts; do
  case $part in tests | train | speed) ;; *) echo "unknown part $part (tests, train, speed)"; exit 2 ;; esac
done
wants() { [[ " $parts " == *" $1 "* ]]; }
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:$PWD/server:$PWD/clients/python:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1
[ -d .mnist ] && export SJFF_DATA_DIR="${SJFF_DATA_DIR:-$PWD/.mnist}"
OUT="${OUT:-/tmp/sjff-gpu-out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cupy', cupy.__version__)"
show() {  # NAME METRICS_JSON: the run's graph use and model digest, one line per epoch
  python3 - "$1" "$2" <<'PY'
import hashlib, json, pathlib, sys
m = json.load(open(sys.argv[2]))
model = pathlib.Path(sys.argv[2]).parent / "model" / "model.safetensors"
digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16] if model.is_file() else "-"
print(f"{sys.argv[1]:>10}  cuda_graph: {m.get('cuda_graph')}; model sha256 {digest}")
for e in m["epochs"]:
    print(f"{sys.argv[1]:>10}  epoch {e['epoch']}: {e['train_seconds']:.2f} s train "
          f"({e['train_samples_per_second']:,.0f} samples/s), train acc {e['train_pn_accuracy']:.4f}"
          + (f", test acc {e['test_accuracy']:.4f} ({e['test_images_per_second']:,.0f} images/s)"
             if "test_accuracy" in e else ""))
PY
}
rc=0
if wants tests; then
  echo "== CuPy kernels vs torch, graphed epochs vs eager (tests/library/test_kernels.py, test_present_kernel.py,"
  echo "   test_present_scoring.py, test_graphed_epochs.py)"
  timeout 300 python3 -m pytest -q -rs -p no:cacheprovider tests/library/test_kernels.py tests/library/test_present_kernel.py \
    tests/library/test_present_scoring.py tests/library/test_graphed_epochs.py || rc=1
fi
if wants train; then
  echo "== The paper's batched P_sym row on MNIST through sjff train (spikingjelly_ff/configs/paper)"
  if python3 -c "from spikingjelly_ff.runs.data import find_dataset; find_dataset('mnist')" 2>/dev/null; then
    # name, backend, SJFF_PRESENT, SJFF_GRAPH, epochs, seed: one launch per presentation and
    # one CUDA graph replay per batch for three seeds, then each path without and with graphs
    for path in "graph-s0 cupy 1 1 3 0" "graph-s1 cupy 1 1 3 1" "graph-s2 cupy 1 1 3 2" "eager-s0 cupy 1 0 3 0" \
        "step-eager cupy 0 0 2 0" "step-graph cupy 0 1 2 0" "torch-eager torch 1 0 2 0" "torch-graph torch 1 1 2 0"; do
      set -- $path
      if [ "$4" = 1 ] && [ -n "${graph_hung:-}" ]; then
        echo "$1: skipped, a graphed run before it ran out of time ($graph_hung)"; rc=1; continue
      fi
      # a run takes well under a minute (the torch path's two epochs about 20 s); a hung
      # graphed run stops the graphed runs after it, so the eager ones still fit the call
      SJFF_PRESENT=$3 SJFF_GRAPH=$4 timeout -k 10 "${SJFF_TRAIN_LIMIT:-150}" python3 -m spikingjelly_ff.cli train paper/hebbian-batched-symmetric \
        --set device=cuda --set backend=$2 --set train.epochs=$5 --set seed=$6 --out "$OUT/train-$1" --quiet --json \
        >/dev/null
      code=$?
      if [ $code -ne 0 ]; then
        rc=1; echo "$1: sjff train exited $code"
        [ $code -eq 124 ] && [ "$4" = 1 ] && graph_hung=$1
      fi
      [ -f "$OUT/train-$1/metrics.json" ] && { show "$1" "$OUT/train-$1/metrics.json" || rc=1; }
    done
    for pair in "graph-s0 eager-s0" "step-graph step-eager" "torch-graph torch-eager"; do  # graphs train the same model
      set -- $pair
      if [ ! -f "$OUT/train-$1/model/model.safetensors" ] || [ ! -f "$OUT/train-$2/model/model.safetensors" ]; then
        echo "$1 / $2: not compared, a run wrote no model"; rc=1
      elif cmp -s "$OUT/train-$1/model/model.safetensors" "$OUT/train-$2/model/model.safetensors"; then
        echo "$1 = $2: the same model, byte for byte"
      else
        echo "$1 != $2: the models differ"; rc=1
      fi
    done
    echo "== The competitive spiking conv net (conv/spiking-competitive-mnist), 3,000 MNIST images on the GPU"
    echo "   (torch convolutions, the CuPy neuron kernel on the flattened maps: backend auto)"
    timeout 180 python3 -m spikingjelly_ff.cli train conv/spiking-competitive-mnist --set device=cuda \
      --set train.epochs=1 --set train.limit=3000 --set eval.limit=1000 --out "$OUT/train-sconv" --quiet --json \
      >/dev/null || rc=1
    [ -f "$OUT/train-sconv/metrics.json" ] && { show sconv "$OUT/train-sconv/metrics.json" || rc=1; }
  else
    echo "skipped: MNIST not found (set SJFF_DATA_DIR)"
  fi
fi
if wants speed; then
  echo "== GPU throughput (benchmarks/gpu_speed.py)"
  timeout 300 python3 benchmarks/gpu_speed.py --online-samples 1000 --images 10000 --json "$OUT/gpu_speed.json" || rc=1
  echo "== All-label testing by layer width (benchmarks/gpu_scoring.py)"
  timeout 200 python3 benchmarks/gpu_scoring.py --json "$OUT/gpu_scoring.json" || rc=1
  timeout 200 python3 benchmarks/gpu_scoring.py --no-carry --json "$OUT/gpu_scoring_rest.json" || rc=1
fi
exit $rc
