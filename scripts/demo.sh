#!/usr/bin/env bash
# The main job (`make demo`): the home fine-tuning experiment end to end on the default model.
#   1. CPT on Korean law text (rsLoRA, embed_tokens/lm_head at the embedding learning rate, 4-bit base)
#   2. IFT (Alpaca-style maths solutions) from the CPT adapter      → runs/demo/cpt-ift
#   3. IFT from the base alone (the ablation)                       → runs/demo/ift
#   4. the inference test: the same questions to base, CPT, IFT and CPT+IFT, streamed
#   5. loss graphs, then a PEFT adapter, a merged HF folder and a q8_0 GGUF of CPT+IFT, checked by loading it back
#   6. runs/demo/report.md; the last line printed is `report: PATH`
# DEMO_SCALE=full trains longer (what a person with an hour would run). Finished stages are skipped on a re-run;
# delete runs/demo (or one stage's folder) to redo them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
loft="${LOFT:-target/release/loft}"
model=".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
out="${DEMO_OUT:-runs/demo}"
scale="${DEMO_SCALE:-small}"
mkdir -p "$out"

case "$scale" in
  small) cpt_steps=8; ift_steps=8; ift_lr=1e-3; batch=2; accum=2; eval_every=8; save_every=4; val=0.03; answer_tokens=128 ;;
  full) cpt_steps=240; ift_steps=120; ift_lr=2e-4; batch=4; accum=2; eval_every=20; save_every=20; val=0.1;
        answer_tokens=256 ;;
  *) echo "error: DEMO_SCALE=$scale: expected small or full" >&2; exit 2 ;;
esac
common=(--set "train.per_device_train_batch_size=$batch" --set "train.gradient_accumulation_steps=$accum"
        --set "train.eval_steps=$eval_every" --set "train.save_steps=$save_every" --set "data.validation_split=$val")
started=$(date +%s)

stage() { printf '\n== %s ==\n' "$*" >&2; }

# Alpaca's prompt for one instruction, as `data.format = "alpaca"` renders it for training. $(...) drops trailing
# newlines, so callers put back the one after "### Response:" that training saw.
alpaca_prompt() {
  printf 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Response:' "$1"
}

# A stage is done when its run folder has its summary (written after the final adapter).
train_stage() {
  local name="$1"; shift
  if [ -f "$out/$name/train_summary.json" ]; then
    echo "$name: done already ($out/$name/train_summary.json); skipping" >&2
    return 0
  fi
  # An interrupted stage continues from its newest checkpoint; one that never saved starts over.
  local how=--overwrite
  if compgen -G "$out/$name/checkpoint-*/checkpoint_complete" >/dev/null; then how=--resume; fi
  "$loft" train "$@" --set "train.output_dir=\"$out/$name\"" "${common[@]}" "$how"
}

stage "1/6 CPT on Korean law text (configs/cpt.toml, $scale)"
train_stage cpt configs/cpt.toml --set "train.max_steps=$cpt_steps"

stage "2/6 IFT from the CPT adapter (configs/ift.toml)"
train_stage cpt-ift configs/ift.toml --set "train.max_steps=$ift_steps" --set "train.learning_rate=$ift_lr" \
  --set "lora.init_adapter=\"$out/cpt/adapter\""

stage "3/6 IFT from the base alone (the ablation)"
train_stage ift configs/ift.toml --set "train.max_steps=$ift_steps" --set "train.learning_rate=$ift_lr" \
  --set 'lora.init_adapter=""'

stage "4/6 the inference test: the same questions to base, CPT, IFT and CPT+IFT"
answers="$out/answers.jsonl"
if [ ! -f "$answers.complete" ]; then
  : > "$answers"
  questions=(
    "서울의 유명한 랜드마크 하나를 소개해 주세요."
    "Continue the Fibonacci sequence: 1, 1, 2, 3, 5, 8,"
    "Describe the planet Earth."
    "한국 전통 음악에 대해 설명해 주세요."
    "대한민국 헌법 제1조는 무엇을 말하나요?"
    "How many subsets does a set with 4 elements have?"
  )
  models=("base" "cpt" "ift" "cpt-ift")
  for q in "${questions[@]}"; do
    # The IFT format (Alpaca's prompt), fed as is to every model.
    prompt="$(alpaca_prompt "$q")"$'\n'
    for m in "${models[@]}"; do
      adapters=()
      case "$m" in
        cpt) adapters=(--adapter "$out/cpt/adapter") ;;
        ift) adapters=(--adapter "$out/ift/adapter") ;;
        cpt-ift) adapters=(--adapter "$out/cpt/adapter" --adapter "$out/cpt-ift/adapter") ;;
      esac
      printf '\n[%s] %s\n' "$m" "$q" >&2
      # Streamed to the terminal (stderr) and kept for the report.
      "$loft" generate --model "$model" "${adapters[@]}" --raw --prompt "$prompt" --max-new-tokens "$answer_tokens" \
        --repetition-penalty 1.1 \
        2> "$out/generate.err" | tee "$out/answer.txt" >&2
      text="$(cat "$out/answer.txt")"
      stats="$(tail -n 1 "$out/generate.err")"
      python3 -c 'import json,sys; print(json.dumps({"model": sys.argv[1], "question": sys.argv[2], "answer": sys.argv[3], "stats": sys.argv[4]}, ensure_ascii=False))' \
        "$m" "$q" "$text" "$stats" >> "$answers"
    done
  done
  touch "$answers.complete"
fi

stage "5/6 loss graphs and exports"
"$loft" plot "$out/cpt" --out "$out/cpt-loss.png" --title "CPT on Korean law text"
"$loft" plot "$out/ift" "$out/cpt-ift" --out "$out/ift-vs-cpt-ift.png" --title "IFT alone vs CPT+IFT"
both=(--adapter "$out/cpt/adapter" --adapter "$out/cpt-ift/adapter")
[ -f "$out/merged/config.json" ] || "$loft" merge --model "$model" "${both[@]}" --out "$out/merged" --dtype f16 --force
[ -f "$out/cpt-ift.q8_0.gguf" ] || "$loft" export gguf --model "$model" "${both[@]}" --quant q8_0 \
  --out "$out/cpt-ift.q8_0.gguf" --force
check_q="Describe the planet Earth."
check_prompt="$(alpaca_prompt "$check_q")"$'\n'
"$loft" generate --model "$out/merged" --raw --prompt "$check_prompt" --max-new-tokens 64 > "$out/check-merged.txt" 2>/dev/null
"$loft" generate --model "$out/cpt-ift.q8_0.gguf" --raw --prompt "$check_prompt" --max-new-tokens 64 > "$out/check-gguf.txt" 2>/dev/null
# The same text scored by the trained model (adapters on the 4-bit base), the merged folder and the GGUF.
check_text=".cache/data/ko-law/kolaw-constitution.txt"
{
  printf '{"model": "base + adapters", "eval": %s}\n' \
    "$("$loft" eval --model "$model" "${both[@]}" --text "$check_text" --max-tokens 1024 --json 2>/dev/null | tail -n 1)"
  printf '{"model": "merged f16 folder", "eval": %s}\n' \
    "$("$loft" eval --model "$out/merged" --text "$check_text" --max-tokens 1024 --json 2>/dev/null | tail -n 1)"
  printf '{"model": "q8_0 GGUF", "eval": %s}\n' \
    "$("$loft" eval --model "$out/cpt-ift.q8_0.gguf" --text "$check_text" --max-tokens 1024 --json 2>/dev/null | tail -n 1)"
} > "$out/check-loss.jsonl"

stage "6/6 report"
echo "$(( $(date +%s) - started ))" > "$out/demo-seconds.txt"
python3 scripts/demo_report.py "$out" "$scale" "$answer_tokens"
echo "report: $out/report.md"
