#!/usr/bin/env bash
# Opt-in check (not in CI) that llama.cpp itself runs what `loft export` writes:
#   1. builds llama-perplexity and llama-quantize from the llama-cpp-python==0.3.36 sdist (vendor/llama.cpp) into
#      .cache/llama.cpp-0.3.36/ (CMake from PATH, or pip-installed into .cache/venv-cmake); 10–25 min on 2 cores,
#      once;
#   2. exports the default model as f32, q8_0 and q4_k_m, and has llama-quantize make its own Q4_K_M from loft's
#      f32 file: the tensor types of the two Q4_K_M files must agree (gguf-py compares them);
#   3. writes a small random PEFT adapter (plain LoRA and rsLoRA), exports it merged (`loft export gguf --adapter`)
#      and as a llama.cpp LoRA (`loft export gguf-adapter`), and runs the LoRA on the f32 base with --lora;
#   4. prints llama-perplexity's figure for each file, next to `loft eval` on the same text.
# Usage: scripts/check_export_llamacpp.sh [build|run|all]   (default all; LOFT_THREADS, LLAMA_CTX, LOFT_MODEL
# override; LOFT_BIN names the loft binary, else target/release/loft, built if missing)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LOFT_CACHE:-$root/.cache}"
py="${PYTHON:-python3}"
version=0.3.36
llama="$cache/llama.cpp-$version"
bin="$llama/build/bin"
threads="${LOFT_THREADS:-2}"
ctx="${LLAMA_CTX:-512}"
model="${LOFT_MODEL:-$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
text="$root/../shared/reference/apache-2.0.txt"
[ -f "$text" ] || text="$root/reference/apache-2.0.txt"

find_cmake() {
  if command -v cmake >/dev/null 2>&1; then command -v cmake; return; fi
  local venv="$cache/venv-cmake"
  if [ ! -x "$venv/bin/cmake" ]; then
    echo "check: no cmake on PATH; installing the cmake package into $venv" >&2
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet cmake
  fi
  echo "$venv/bin/cmake"
}

# The llama.cpp programs to build (bench/decode_vs_llamacpp.sh asks for llama-bench through LLAMA_TARGETS).
targets="${LLAMA_TARGETS:-llama-perplexity llama-quantize}"

build() {
  local missing=""
  for t in $targets; do [ -x "$bin/$t" ] || missing="$missing $t"; done
  if [ -z "$missing" ]; then return 0; fi
  local cmake; cmake="$(find_cmake)"
  if [ ! -f "$llama/src/CMakeLists.txt" ]; then
    echo "check: llama-cpp-python==$version sdist (vendor/llama.cpp)" >&2
    local tmp; tmp="$(mktemp -d)"
    "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$tmp"
    rm -rf "$llama/src"; mkdir -p "$llama/src"
    tar xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$llama/src" --strip-components=3 \
      "llama_cpp_python-$version/vendor/llama.cpp"
    rm -rf "$tmp"
  fi
  # A native build dies with illegal instructions on these VMs: name the instruction sets instead.
  "$cmake" -S "$llama/src" -B "$llama/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF >"$llama/cmake.log"
  local start=$SECONDS
  # shellcheck disable=SC2086 # a list of targets
  "$cmake" --build "$llama/build" --target $missing -j"$threads" >"$llama/build.log"
  echo "check: built$missing in $((SECONDS - start)) s" >&2
}

# llama-perplexity's final estimate for a model (and extra arguments such as --lora FILE).
ppl() {
  local log="$work/ppl-$(basename "$1").log"
  "$bin/llama-perplexity" -m "$@" -f "$text" -c "$ctx" -b "$ctx" -t "$threads" >"$log" 2>&1 \
    || { echo "error: llama-perplexity failed on $1 (see $log)" >&2; tail -5 "$log" >&2; exit 1; }
  sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 ± \2/p' "$log"
}

# Runs a loft command, its stderr into steps.log; on failure shows the end of it and stops.
step() {
  "$@" 2>>"$work/steps.log" || { echo "error: $* failed:" >&2; tail -3 "$work/steps.log" >&2; exit 1; }
}

# loft's own mean loss over the text's first 2,000 tokens (extra arguments: --adapter DIR).
loft_eval() {
  "$loft" eval --model "$@" --text "$text" --max-tokens 2000 --json 2>/dev/null \
    | "$gguf_py" -c 'import json,sys; v=json.load(sys.stdin); print("%.6f" % v["loss"])'
}

run() {
  [ -f "$model" ] || "$root/scripts/fetch.sh" model
  [ -x "$cache/venv-gguf/bin/python" ] || "$root/scripts/fetch.sh" gguf-py
  gguf_py="$cache/venv-gguf/bin/python"
  loft="${LOFT_BIN:-$root/target/release/loft}"
  [ -x "$loft" ] || (cd "$root" && cargo build --release --quiet -p loft-cli)
  work="$cache/check-export"
  rm -rf "$work"; mkdir -p "$work"

  echo "check: exporting $(basename "$model") as f32, f16, q8_0 and q4_k_m" >&2
  for q in f32 f16 q8_0 q4_k_m; do
    step "$loft" export gguf --model "$model" --quant "$q" --out "$work/loft-$q.gguf"
  done
  "$bin/llama-quantize" "$work/loft-f32.gguf" "$work/llama-q4_k_m.gguf" Q4_K_M "$threads" >"$work/quantize.log" 2>&1
  echo "== loft's q4_k_m against llama-quantize's Q4_K_M of the same f32 file"
  "$gguf_py" - "$work/loft-q4_k_m.gguf" "$work/llama-q4_k_m.gguf" <<'PY'
import sys
from collections import Counter
import gguf
ours, theirs = ({t.name: t for t in gguf.GGUFReader(p).tensors} for p in sys.argv[1:3])
assert ours.keys() == theirs.keys(), sorted(set(ours) ^ set(theirs))
wrong = [(n, t.tensor_type.name, theirs[n].tensor_type.name) for n, t in ours.items()
         if t.tensor_type != theirs[n].tensor_type]
total, same = Counter(), Counter()
for n, t in ours.items():
    total[t.tensor_type.name] += 1
    same[t.tensor_type.name] += bytes(t.data) == bytes(theirs[n].data)
print(f"tensor types: {len(ours) - len(wrong)} of {len(ours)} as llama-quantize chose")
for n, a, b in wrong:
    print(f"  {n}: loft {a}, llama.cpp {b}")
print("identical bytes: " + ", ".join(f"{k} {same[k]}/{total[k]}" for k in sorted(total)))
sys.exit(1 if wrong else 0)
PY

  echo "check: a random PEFT adapter (r 8, alpha 16, all seven modules), plain and rsLoRA" >&2
  "$gguf_py" - "$model" "$work" <<'PY'
import json, os, sys
import numpy as np
import gguf
from safetensors.numpy import save_file
reader = gguf.GGUFReader(sys.argv[1])
shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}  # ne: [in, out]
hf = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
      "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
      "ffn_down": "mlp.down_proj"}
rng = np.random.default_rng(7)
r, tensors = 8, {}
for name, shape in shapes.items():
    parts = name.split(".")
    if parts[0] != "blk" or parts[2] not in hf:
        continue
    n_in, n_out = shape
    key = f"base_model.model.model.layers.{parts[1]}.{hf[parts[2]]}"
    tensors[f"{key}.lora_A.weight"] = (rng.uniform(-1, 1, (r, n_in)) / np.sqrt(n_in)).astype(np.float32)
    tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.05, (n_out, r)).astype(np.float32)
for sub, rslora in (("adapter", False), ("adapter-rslora", True)):
    d = os.path.join(sys.argv[2], sub)
    os.makedirs(d)
    save_file(tensors, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "lora_dropout": 0.0, "use_rslora": rslora, "bias": "none",
           "target_modules": [m.split(".")[1] for m in hf.values()], "task_type": "CAUSAL_LM"}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
PY
  for a in adapter adapter-rslora; do
    step "$loft" export gguf --model "$model" --adapter "$work/$a" --quant f32 --out "$work/merged-$a.gguf"
    step "$loft" export gguf-adapter --model "$model" --adapter "$work/$a" --out "$work/lora-$a.gguf"
  done
  step "$loft" export gguf-adapter --model "$model" --adapter "$work/adapter" --dtype f16 \
    --out "$work/lora-adapter-f16.gguf"

  echo "== llama-perplexity (-c $ctx, $threads threads) and loft eval (mean loss, first 2,000 tokens) on $(basename "$text")"
  row() { printf '%-46s %-22s %s\n' "$@"; }
  row "file" "llama.cpp PPL" "loft eval loss"
  row "$(basename "$model") (source)" "$(ppl "$model")" "$(loft_eval "$model")"
  for q in f32 f16 q8_0 q4_k_m; do
    row "loft-$q.gguf" "$(ppl "$work/loft-$q.gguf")" "$(loft_eval "$work/loft-$q.gguf")"
  done
  row "llama-q4_k_m.gguf (llama-quantize)" "$(ppl "$work/llama-q4_k_m.gguf")" "$(loft_eval "$work/llama-q4_k_m.gguf")"
  local status=0 merged lora
  for a in adapter adapter-rslora adapter-f16; do
    merged="$(ppl "$work/merged-${a%-f16}.gguf")"
    lora="$(ppl "$work/loft-f32.gguf" --lora "$work/lora-$a.gguf")"
    row "merged-${a%-f16}.gguf" "$merged" "$(loft_eval "$model" --adapter "$work/${a%-f16}")"
    row "loft-f32.gguf --lora lora-$a.gguf" "$lora" "-"
    # The LoRA applied by llama.cpp must score as the merge does (f16 adapter tensors: within rounding).
    if ! awk -v m="${merged%% *}" -v l="${lora%% *}" 'BEGIN { d = (m - l) / m; exit !(d < 1e-3 && d > -1e-3) }'; then
      echo "MISMATCH: --lora lora-$a.gguf gives PPL $lora, the merged model $merged" >&2
      status=1
    fi
  done
  echo "(files and logs in $work)"
  return $status
}

case "${1:-all}" in
  build) build ;;
  run) run ;;
  all) build; run ;;
  *) echo "error: unknown step '${1}' (build, run, all)" >&2; exit 2 ;;
esac
