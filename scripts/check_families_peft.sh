#!/usr/bin/env bash
# Opt-in check (not in `make test`: it needs torch) that an adapter loft trains loads in PEFT with loft's loss, for
# each tiny family of crates/loft/tests/fixtures/families (scripts/make_family_fixtures.py):
#   1. writes a lowercase text the fixtures' 64-token tokenizer covers (fixed seed);
#   2. `loft train` on the family's Hugging Face folder, 4 steps at lr 1e-2 (batch 4 × 32, packed), twice: LoRA r4
#      on q,k,v,o,gate,up,down, and rsLoRA on the same plus embed_tokens and lm_head;
#   3. `loft eval` of the first 64 tokens (the models' context) with and without each adapter;
#   4. transformers + PEFT (CPU, float32, eager): the folder alone and `PeftModel.from_pretrained(folder, adapter)`
#      on the same text; fails when a loss is more than 1e-4 (relative) from loft's, or an adapter moved the loss
#      by less than 100 times that (the comparison would then say nothing). About 10 seconds.
# Usage: scripts/check_families_peft.sh [FAMILY ...]   (default: qwen2 qwen2_tied qwen3 mistral mistral_window gemma3; LOFT_BIN names
# the loft binary, else target/release/loft, built if missing; LOFT_THREADS, default 1). Runs bench/peers/venv.sh
# if .cache/venv-peft is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LOFT_CACHE:-$root/.cache}"
threads="${LOFT_THREADS:-1}"
fixtures="$root/crates/loft/tests/fixtures/families"
work="$cache/check-families-peft"
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(qwen2 qwen2_tied qwen3 mistral mistral_window gemma3)

step() {
  "$@" 2>>"$work/steps.log" || { echo "error: $* failed:" >&2; tail -3 "$work/steps.log" >&2; exit 1; }
}

[ -x "$cache/venv-peft/bin/python" ] || "$root/bench/peers/venv.sh"
loft="${LOFT_BIN:-$root/target/release/loft}"
[ -x "$loft" ] || (cd "$root" && cargo build --release --quiet -p loft-cli)
rm -rf "$work"; mkdir -p "$work"

# Words the tiny tokenizer spells (a-z, space, '.', ',', newline), in paragraphs of 30.
"$cache/venv-peft/bin/python" - "$work/text.txt" <<'EOF'
import random, sys
words = "the cat and the dog sat on a mat . it is an old tale , and the boat went far . we are at the inn .".split()
r = random.Random(7)
paragraphs = [" ".join(r.choice(words) for _ in range(30)).replace(" .", ".").replace(" ,", ",") for _ in range(40)]
open(sys.argv[1], "w").write("\n\n".join(paragraphs) + "\n")
EOF

variants=(
  "lora|lora.use_rslora=false"
  "rslora_embed|lora.use_rslora=true|train.embedding_learning_rate=1e-3|lora.target_modules=[\"q_proj\",\"k_proj\",\"v_proj\",\"o_proj\",\"gate_proj\",\"up_proj\",\"down_proj\",\"embed_tokens\",\"lm_head\"]"
)
cat >"$work/train.toml" <<EOF
[model]
path = "set per family"
max_seq_length = 32
load_in_4bit = false

[lora]
r = 4
lora_alpha = 8
lora_dropout = 0.0
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

[data]
train_files = ["$work/text.txt"]
format = "text"
text_template = "{text}"
add_eos = true
packing = true
validation_split = 0
shuffle = true

[train]
output_dir = "set per run"
per_device_train_batch_size = 4
gradient_accumulation_steps = 1
max_steps = 4
learning_rate = 1e-2
warmup_ratio = 0
lr_scheduler_type = "constant"
optim = "adamw_torch"
logging_steps = 1
save_steps = 0
seed = 1
report_to = "none"
EOF

runs=()
for family in "${families[@]}"; do
  hf="$fixtures/$family/hf"
  [ -f "$hf/config.json" ] || { echo "error: no $hf (scripts/make_family_fixtures.py $family writes it)" >&2; exit 1; }
  step "$loft" eval --model "$hf" --text "$work/text.txt" --max-tokens 64 --json --threads "$threads" \
    >"$work/$family-base.json"
  for variant in "${variants[@]}"; do
    IFS='|' read -r -a parts <<<"$variant"
    name="${parts[0]}"; run="$work/$family-$name"
    sets=(--set "model.path=\"$hf\"" --set "train.output_dir=\"$run\"")
    for s in "${parts[@]:1}"; do sets+=(--set "$s"); done
    echo "check: $family $name: loft train (4 steps), loft eval" >&2
    step "$loft" train "$work/train.toml" "${sets[@]}" --threads "$threads" --overwrite
    step "$loft" eval --model "$hf" --adapter "$run/adapter" --text "$work/text.txt" --max-tokens 64 --json \
      --threads "$threads" >"$run/eval.json"
    runs+=("$family:$name")
  done
done

echo "check: transformers + PEFT" >&2
status=0
"$cache/venv-peft/bin/python" -W ignore "$root/scripts/check_families_peft.py" --fixtures "$fixtures" \
  --work "$work" --text "$work/text.txt" --max-tokens 64 "${runs[@]}" || status=$?
echo "(files and logs in $work)"
exit $status
