#!/usr/bin/env bash
# loft vs PyTorch+PEFT on the same LoRA training step (SmolLM2-135M shape, random weights, r16 on 7 modules,
# AdamW, f32), run one after the other on 2 threads, then the ratios. Usage: bench/compare.sh [BATCH] [SEQ]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
batch="${1:-4}"; seq="${2:-256}"; threads="${THREADS:-2}"
loft="$root/target/release/loft"
py="$root/.cache/venv-peft/bin/python"
[ -x "$py" ] || "$root/bench/peers/venv.sh"
echo "== loft, batch $batch × $seq, $threads threads" >&2
loft_json=$("$loft" --threads "$threads" bench train --batch "$batch" --seq "$seq" --steps 3 --warmup 1 --vs-gemm --json | tail -n 1)
echo "$loft_json"
echo "== PyTorch + PEFT, same step" >&2
peft_json=$("$py" "$root/bench/peers/peft_train.py" --threads "$threads" --batch "$batch" --seq "$seq" --steps 3 --warmup 1 | tail -n 1)
echo "$peft_json"
python3 - "$loft_json" "$peft_json" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"speed: loft {a['tokens_per_second']:.1f} tok/s, PyTorch+PEFT {b['tokens_per_second']:.1f} tok/s, ratio {a['tokens_per_second']/b['tokens_per_second']:.2f}x")
g = a.get('gemm_best_gflops_per_second')
if g:
    print(f"loft's step: {a['gflops_per_second']:.1f} GFLOP/s, {100*a['gflops_per_second']/g:.1f} % of gemm's best on its frozen products ({g:.1f} GFLOP/s; {100*a['gflops_per_second']/a['gemm_median_gflops_per_second']:.1f} % of gemm's median, {a['gemm_median_gflops_per_second']:.1f}); its fastest step {100*a['gflops_per_second']*a['seconds_per_step']/a['seconds_per_step_fastest']/g:.1f} % of gemm's best")
print(f"peak memory: loft {a['peak_rss_bytes']/2**30:.2f} GiB, PyTorch+PEFT {b['peak_rss_bytes']/2**30:.2f} GiB, ratio {a['peak_rss_bytes']/b['peak_rss_bytes']:.2f}x")
PY
