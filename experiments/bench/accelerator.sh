#!/usr/bin/env bash
# The accelerator benchmark: one command for the day a GPU or TPU is at hand.
#
#   experiments/bench/accelerator.sh [OUT_DIR]          # full settings (< 5 min on a GPU)
#   TINY=1 experiments/bench/accelerator.sh [OUT_DIR]   # seconds on a CPU (tested)
#
# Writes OUT_DIR/{cohort,convolutions,train_loop}/bench.{json,md} and
# OUT_DIR/accelerator.json (the device and the three JSON paths):
#   * cohort: K = 1, 2, 4, 8 peers, one vmapped step vs a loop of per-peer steps;
#   * convolutions: resnet20 training at batch 128 and 256, float32 and bfloat16;
#   * train_loop: kdjax fit vs a hand-written lax.scan floor vs a Python loop.
set -euo pipefail

cd "$(dirname "$0")/../.."
OUT="${1:-experiments/results/bench_accelerator}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"

if [[ "${TINY:-0}" == "1" ]]; then
  COHORT=(--models mlp --quick --min-seconds 0 --rounds 1)
  CONV=(--model resnet8 --batch 8 --steps 2 --rounds 1)
  LOOP=(--num-steps 4 --repeats 1)
else
  COHORT=(--rounds 3)
  CONV=(--batch 128 256 --steps 20 --rounds 3)
  LOOP=(--repeats 5)
fi

"$PY" -m experiments.bench.cohort "${COHORT[@]}" --out "$OUT/cohort"
"$PY" -m experiments.bench.convolutions "${CONV[@]}" --out "$OUT/convolutions"
"$PY" -m experiments.bench.train_loop "${LOOP[@]}" --out "$OUT/train_loop"

"$PY" - "$OUT" <<'EOF'
import json, os, sys
import jax
out = sys.argv[1]
summary = {'device': f'{jax.devices()[0].device_kind} x{jax.device_count()}',
           'platform': jax.default_backend(),
           'results': {n: os.path.join(out, n, 'bench.json')
                       for n in ('cohort', 'convolutions', 'train_loop')}}
with open(os.path.join(out, 'accelerator.json'), 'w') as f:
  json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
EOF
