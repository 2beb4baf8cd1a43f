#!/usr/bin/env bash
# The one prepared run for a GPU machine (see ../shared/GPU.md): the test suite without the Ray
# sweep tests, then the preset benchmark with every GPU row. Results go to $OUT (default ./gpu-out):
# tests.log, bench.log, bench.json, env.txt. At most 9 minutes (tests 4, benchmark 5): one device call.
#   on the GPU box, from the checkout root:  PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh
# MNIST comes along in .gpu-data/mnist (git-ignored), or set DATA=/path/to/mnist.
set -uo pipefail
OUT=${OUT:-gpu-out}
DATA=${DATA:-.gpu-data/mnist}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
{ nvidia-smi; python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__,
'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"; git log -1 --oneline; } \
  > "$OUT/env.txt" 2>&1
# 1. Tests: the fast tier and every GPU-only test (the slow tier, Ray sweeps and launches, stays out).
timeout 240 python3 -m pytest -q -p no:cacheprovider tests -m "not slow or gpu" -ra > "$OUT/tests.log" 2>&1
echo "tests exit $?" | tee -a "$OUT/tests.log"
# 2. The README's GPU table: the seed network's full recipe (1 seed) and the fast/GPU rows (3 seeds).
#    (Compiling happens before the clock; later seeds reuse the compile cache.)
timeout 300 python3 benchmarks/bench_presets.py --data-dir "$DATA" --seeds 3 --seed-full --seed-seeds 1 \
  --only "fast (default)" "fast (default, compiled)" "fast (default, deterministic)" "gpu recipe (compiled)" \
  --json "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench exit $?" | tee -a "$OUT/bench.log"
tail -25 "$OUT/bench.log"
