#!/usr/bin/env bash
# loft's decode and prompt speed beside llama.cpp's on the same GGUF and threads, in one run:
#   llama-bench (built from the llama-cpp-python==0.3.36 sdist by scripts/check_export_llamacpp.sh, with the same
#   flags: AVX2, FMA, F16C, no AVX-512) for pp512, tg128 and tg128 at depth 512, then `loft bench decode` with a 16-token prompt (decode
#   from a nearly empty context, as tg128) and with a 512-token prompt (prompt speed as pp512, and decode after it).
# Usage: bench/decode_vs_llamacpp.sh [MODEL.gguf]   (THREADS, default 2; the default model otherwise)
# Run it with nothing else on the machine; the first run builds llama-bench (10–25 min on 2 cores, once).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
threads="${THREADS:-2}"
model="${1:-$root/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
loft="$root/target/release/loft"
bench="$root/.cache/llama.cpp-0.3.36/build/bin/llama-bench"
[ -f "$model" ] || "$root/scripts/fetch.sh" model
[ -x "$loft" ] || cargo build --release --locked --manifest-path "$root/Cargo.toml"
[ -x "$bench" ] || LLAMA_TARGETS=llama-bench "$root/scripts/check_export_llamacpp.sh" build

echo "== $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs); $threads threads; $(basename "$model")" >&2
llama_json=$("$bench" -m "$model" -t "$threads" -p 512 -n 128 -d 0,512 -r 3 -o json 2>/dev/null)
loft_short=$("$loft" --threads "$threads" bench decode --model "$model" --prompt-tokens 16 --gen-tokens 128 \
  --repeat 3 --json 2>/dev/null | tail -n 1)
loft_long=$("$loft" --threads "$threads" bench decode --model "$model" --prompt-tokens 512 --gen-tokens 128 \
  --repeat 3 --json 2>/dev/null | tail -n 1)
python3 - "$llama_json" "$loft_short" "$loft_long" <<'PY'
import json, sys
runs, short, long = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
def llama(prompt, gen, depth):
    return next(r["avg_ts"] for r in runs
                if (r["n_prompt"] > 0) == prompt and (r["n_gen"] > 0) == gen and r.get("n_depth", 0) == depth)
pp, tg, tg_deep = llama(True, False, 0), llama(False, True, 0), llama(False, True, 512)
print(f"prompt 512: loft {long['prompt_tokens_per_second']:.1f} tok/s, llama.cpp {pp:.1f} tok/s "
      f"({long['prompt_tokens_per_second'] / pp:.2f}x)")
print(f"decode 128 (16-token prompt; llama.cpp from an empty context): loft {short['decode_tokens_per_second']:.1f} "
      f"tok/s, llama.cpp {tg:.1f} tok/s ({short['decode_tokens_per_second'] / tg:.2f}x)")
print(f"decode 128 after a 512-token prompt (llama.cpp: tg128 at depth 512): loft "
      f"{long['decode_tokens_per_second']:.1f} tok/s, llama.cpp {tg_deep:.1f} tok/s "
      f"({long['decode_tokens_per_second'] / tg_deep:.2f}x)")
PY
