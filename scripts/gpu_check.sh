#!/usr/bin/env bash
# One command for a machine with a real GPU (Vulkan on NVIDIA/AMD/Intel, Metal on Apple, DX12 on Windows): builds
# loft, then on the GPU that `--device auto` picks runs the kernel parity tests (every WGSL kernel against the CPU
# engine, 1e-4 relative; training on the GPU against the CPU, 3 steps and cross-device resume), `loft eval` against
# the CPU on the same text, a greedy `loft generate`, prompt and decode speed on both devices, and the LoRA
# training step (`loft bench train`) on the GPU at the default model's shape and at Llama-3.2-1B's (random
# weights, 4-bit base), beside the CPU's; then, where PyTorch sees a CUDA GPU (the venv of bench/peers/venv.sh),
# the same steps in PyTorch+PEFT on that card for the ratio. Figures go to one file: $1, else $OUT/gpu_check.txt
# when OUT is set, else runs/gpu_check.txt. Finishes within 10 minutes (most of it the release build).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${1:-${OUT:+$OUT/gpu_check.txt}}"
out="${out:-runs/gpu_check.txt}"
mkdir -p "$(dirname "$out")"
: > "$out"
say() { echo "$*" | tee -a "$out"; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}" NODEVICE_SELECT=1

scripts/fetch.sh model
cargo build --release --locked 2>&1 | tail -n 1
loft=target/release/loft
model=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf

say "== $(date -u +%FT%TZ) $(uname -srm); CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs)"
"$loft" inspect --devices | tee -a "$out"
device=$("$loft" inspect --devices --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["auto"])')
if [ "$device" = cpu ]; then
  say "error: no hardware GPU adapter (--device auto picks the CPU); see the list above"
  exit 1
fi
name=$("$loft" inspect --devices --json | python3 -c '
import json, sys
d = json.load(sys.stdin); i = int(sys.argv[1].split(":")[1])
print(next(a["name"] for a in d["adapters"] if a["index"] == i))' "$device")
say "GPU: $device ($name)"

say "== kernel parity on $name (cargo test -p loft-gpu)"
LOFT_GPU_ADAPTER="$name" cargo test --release --locked -p loft-gpu -- --nocapture 2>&1 | grep -E "^parity|test result" | tee -a "$out"

text="${LOFT_REFERENCE_DIR:-$root/../shared/reference}/apache-2.0.txt"
[ -f "$text" ] || text="$root/README.md"
say "== eval, first 2000 tokens of $(basename "$text")"
for d in cpu "$device"; do
  t0=$(date +%s.%N)
  json=$("$loft" eval --model "$model" --text "$text" --max-tokens 2000 --json --device "$d" 2>/dev/null)
  say "$d: $json ($(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s)"
done

say "== greedy generate on $device"
"$loft" generate --model "$model" --prompt "What is the capital of France?" --device "$device" 2>/dev/null | tee -a "$out"
echo | tee -a "$out"

say "== bench decode (prompt 512, 128 new tokens)"
for d in cpu "$device"; do
  "$loft" bench decode --model "$model" --device "$d" --json 2>/dev/null | tail -n 1 | sed "s/^/$d: /" | tee -a "$out"
done

say "== bench train: LoRA r16 on 7 modules, AdamW, 4-bit base (Q4_0), batch 4 × 256"
"$loft" bench train --batch 4 --seq 256 --steps 2 --warmup 1 --load-in-4bit --json 2>/dev/null | tail -n 1 |
  sed "s/^/cpu smollm2-135m: /" | tee -a "$out"
for shape in smollm2-135m llama-1b; do
  "$loft" bench train --device "$device" --shape "$shape" --batch 4 --seq 256 --steps 5 --warmup 2 \
    --load-in-4bit --json 2>/dev/null | tail -n 1 | sed "s/^/$device $shape: /" | tee -a "$out"
done

py="$root/.cache/venv-peft/bin/python"
if [ -x "$py" ] && "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  say "== PyTorch+PEFT on the same card (f32, TF32 off; then bf16 autocast), batch 4 × 256"
  for shape in smollm2-135m llama-1b; do
    for bf16 in "" --bf16; do
      "$py" bench/peers/peft_train.py --device cuda --shape "$shape" --batch 4 --seq 256 --steps 5 --warmup 2 \
        $bf16 2>/dev/null | tail -n 1 | sed "s/^/pytorch+peft $shape${bf16:+ bf16}: /" | tee -a "$out"
    done
  done
else
  say "== PyTorch+PEFT: skipped (no .cache/venv-peft whose torch sees a CUDA GPU; bench/peers/venv.sh makes one)"
fi
say "figures: $out"
