#!/usr/bin/env bash
# One command for a machine with a real GPU (Vulkan on NVIDIA/AMD/Intel, Metal on Apple, DX12 on Windows): builds
# loft, then on the GPU that `--device auto` picks runs the kernel parity tests (every WGSL kernel against the CPU
# engine, 1e-4 relative), `loft eval` against the CPU on the same text, a greedy `loft generate`, and prompt and
# decode speed on both devices. Figures go to one file: $1, else $OUT/gpu_check.txt when OUT is set, else
# runs/gpu_check.txt. Finishes in a few minutes (most of it the release build).
#
# Not yet here: training on the GPU. loft trains on the CPU only today (the training forward/backward is not yet
# written against the backend seam), so `bench train --device gpu` and the PyTorch+PEFT comparison on the same
# card come with that work; the CPU's training step is recorded for reference.
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

say "== bench train on the CPU (for reference; training on the GPU is not yet in loft)"
"$loft" bench train --batch 4 --seq 256 --steps 3 --warmup 1 --json 2>/dev/null | tail -n 1 | tee -a "$out"
say "figures: $out"
