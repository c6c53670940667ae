#!/usr/bin/env bash
# Opt-in check (not in CI) that transformers + PEFT read what `loft merge` writes as loft means it:
#   1. takes a LoRA adapter (LOFT_ADAPTER; else the demo's IFT adapter, runs/demo/ift/adapter, when that stage has
#      finished; else trains one with configs/ift.toml for 2 steps at lr 1e-3, IFT from the base alone);
#   2. writes Hugging Face folders with `loft merge`: the base alone in f32, the merged model in f32 and in f16;
#   3. in transformers (CPU, float32): the mean loss over the first 2,000 reference token ids of the Apache licence
#      for the merged f32 folder, the base f32 folder wrapped by `PeftModel.from_pretrained(base, adapter)`, and the
#      f16 folder upcast; checks the folder's tokenizer ids, chat template and generation_config EOS against
#      ../shared/reference/smollm2-135m.json, and the base folder's greedy chat answer;
#   4. prints them next to `loft eval --adapter` on the same ids (GGUF base, --tokenizer-pre gpt-2), and `loft eval`
#      of the folders next to `loft eval --adapter` with the GGUF's own pre-tokenizer, which the folder's
#      tokenizer.json keeps (and transformers on the folder's ids); fails when an f32 figure is more than 1e-3 from
#      its `loft eval --adapter`, or an f16 one more than 1e-2. About 4 minutes with LOFT_THREADS=1.
# Usage: scripts/check_export_transformers.sh   (LOFT_THREADS, default 2, and LOFT_ADAPTER override; LOFT_BIN names
# the loft binary, else target/release/loft, built if missing). Runs bench/peers/venv.sh if .cache/venv-peft is missing.
# The reference figures are the default model's (SmolLM2-135M-Instruct Q4_1), so there is no LOFT_MODEL.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LOFT_CACHE:-$root/.cache}"
threads="${LOFT_THREADS:-2}"
model="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
reference="$root/../shared/reference"
text="$reference/apache-2.0.txt"
work="$cache/check-transformers"

# Runs a loft command, its stderr into steps.log; on failure shows the end of it and stops.
step() {
  "$@" 2>>"$work/steps.log" || { echo "error: $* failed:" >&2; tail -3 "$work/steps.log" >&2; exit 1; }
}

[ -f "$text" ] || { echo "error: no $text (the reference text and token ids)" >&2; exit 1; }
[ -x "$cache/venv-peft/bin/python" ] || "$root/bench/peers/venv.sh"
[ -f "$model" ] || "$root/scripts/fetch.sh" model
loft="${LOFT_BIN:-$root/target/release/loft}"
[ -x "$loft" ] || (cd "$root" && cargo build --release --quiet -p loft-cli)
rm -rf "$work"; mkdir -p "$work"

adapter="${LOFT_ADAPTER:-}"
if [ -z "$adapter" ] && [ -f "$root/runs/demo/ift/train_summary.json" ]; then
  adapter="$root/runs/demo/ift/adapter"
fi
if [ -z "$adapter" ]; then
  [ -f "$cache/data/champ.jsonl" ] || "$root/scripts/fetch.sh" data
  echo "check: training an adapter (configs/ift.toml, 2 steps at lr 1e-3, from the base alone)" >&2
  # lr 1e-3 without warm-up, so that two steps move the loss by more than the tolerances.
  # Relative paths in the config are taken from the working folder.
  (cd "$root" && step "$loft" train configs/ift.toml --threads "$threads" --set "model.path=\"$model\"" \
    --set 'lora.init_adapter=""' --set train.max_steps=2 --set train.learning_rate=1e-3 \
    --set train.warmup_ratio=0 --set data.validation_split=0 --set train.report_to=none \
    --set "train.output_dir=\"$work/run\"" --overwrite)
  adapter="$work/run/adapter"
fi
echo "check: adapter $adapter" >&2

echo "check: loft merge: base alone (f32), merged f32 and f16" >&2
step "$loft" merge --model "$model" --out "$work/base-f32" --dtype f32 --threads "$threads" --force
for dtype in f32 f16; do
  step "$loft" merge --model "$model" --adapter "$adapter" --out "$work/merged-$dtype" --dtype "$dtype" \
    --threads "$threads" --force
done

echo "check: loft eval (first 2,000 tokens)" >&2
loft_eval() {
  local out="$1"; shift
  step "$loft" eval --model "$@" --text "$text" --max-tokens 2000 --json --threads "$threads" >"$work/$out"
}
loft_eval loft-adapter-gpt2.json "$model" --adapter "$adapter" --tokenizer-pre gpt-2
loft_eval loft-adapter.json "$model" --adapter "$adapter"
loft_eval loft-merged-f32.json "$work/merged-f32"
loft_eval loft-merged-f16.json "$work/merged-f16"

echo "check: transformers + PEFT (float32, $threads threads)" >&2
status=0
"$cache/venv-peft/bin/python" -W ignore "$root/scripts/check_export_transformers.py" \
  --reference "$reference/smollm2-135m.json" --text "$text" --threads "$threads" \
  --base "$work/base-f32" --adapter "$adapter" --merged-f32 "$work/merged-f32" --merged-f16 "$work/merged-f16" \
  --loft-adapter-gpt2 "$work/loft-adapter-gpt2.json" --loft-adapter "$work/loft-adapter.json" \
  --loft-merged-f32 "$work/loft-merged-f32.json" \
  --loft-merged-f16 "$work/loft-merged-f16.json" || status=$?
echo "(files and logs in $work)"
exit $status
