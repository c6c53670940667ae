#!/usr/bin/env bash
# Opt-in check (not in CI: it needs torch and takes minutes) of Gemma 3 270M from training to export (issue 16):
#   1. `loft train configs/gemma3-ift.toml` (QLoRA IFT on the Q4_K_M GGUF, 20 steps) unless runs/gemma3-ift has
#      finished; its validation loss must be lower after the run than before the first step;
#   2. `loft merge` of the adapter into an f32 Hugging Face folder;
#   3. transformers (venv-peft: CPU, float32, eager) loads that folder — loft's Gemma config.json, its weights with
#      the (1 + w) norms written as w, its tokenizer.json — and scores the first 1,000 tokens (past the local layers'
#      window of 512) of two texts: the Apache licence, and the last 12 examples of .cache/data/ift.jsonl in
#      Alpaca's prompt (what the adapter was trained on, so that it moves the loss), next to `loft eval` of the
#      folder and `loft eval --adapter` on the GGUF: within 1e-3 (relative);
#   4. `loft export gguf --quant q8_0` of the folder; gguf-py reads it back (architecture, keys, tensor types and
#      shapes); `loft eval` of it must be within 2e-3 (relative) of the folder's on the Apache licence (the IFT text's
#      figure is printed: 2.0e-3 when measured, 718 tokens); when llama-quantize has been built
#      (scripts/check_export_llamacpp.sh build), its Q8_0 of loft's f32 export must equal loft's q8_0 byte for byte,
#      so that what q8_0 changes is the format's rounding, not loft's.
# llama.cpp on the q8_0 file: LOFT_MODEL=<work>/merged-q8_0.gguf scripts/check_export_llamacpp.sh.
# Usage: scripts/check_gemma3_ift.sh   (LOFT_THREADS, default 2; LOFT_TOKENS, default 1000; LOFT_BIN names the loft
# binary, else target/release/loft, built if missing). Runs bench/peers/venv.sh if .cache/venv-peft is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LOFT_CACHE:-$root/.cache}"
threads="${LOFT_THREADS:-2}"
tokens="${LOFT_TOKENS:-1000}"
model="$cache/models/gemma-3-270m-q4_k_m.gguf"
text="$root/../shared/reference/apache-2.0.txt"
[ -f "$text" ] || text="$root/reference/apache-2.0.txt"
run="$root/runs/gemma3-ift"
work="$cache/check-gemma3-ift"

step() {
  "$@" 2>>"$work/steps.log" || { echo "error: $* failed:" >&2; tail -3 "$work/steps.log" >&2; exit 1; }
}

[ -f "$text" ] || { echo "error: no $text (the reference text)" >&2; exit 1; }
[ -f "$model" ] || "$root/scripts/fetch.sh" gemma3
[ -f "$cache/data/ift.jsonl" ] || "$root/scripts/fetch.sh" data
"$root/bench/peers/venv.sh"  # torch, transformers and gguf (added on top of an older venv)
py="$cache/venv-peft/bin/python"
loft="${LOFT_BIN:-$root/target/release/loft}"
[ -x "$loft" ] || (cd "$root" && cargo build --release --quiet -p loft-cli)
rm -rf "$work"; mkdir -p "$work"
# The IFT text: Alpaca's prompt (crates/loft/src/data/template.rs) and answer of the data's last 12 examples.
"$py" - "$cache/data/ift.jsonl" "$work/ift.txt" <<'PY'
import json, sys
head = "Below is an instruction that describes a task{}. Write a response that appropriately completes the request.\n\n"
rows = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")][-12:]
out = []
for r in rows:
    if r.get("input"):
        out.append(head.format(", paired with an input that provides further context")
                   + f"### Instruction:\n{r['instruction']}\n\n### Input:\n{r['input']}\n\n### Response:\n{r['output']}")
    else:
        out.append(head.format("") + f"### Instruction:\n{r['instruction']}\n\n### Response:\n{r['output']}")
open(sys.argv[2], "w", encoding="utf-8").write("\n\n".join(out) + "\n")
PY

if [ ! -f "$run/train_summary.json" ]; then
  echo "check: loft train configs/gemma3-ift.toml (20 steps; a few minutes on 2 cores)" >&2
  (cd "$root" && step "$loft" train configs/gemma3-ift.toml --threads "$threads" --overwrite)
fi
"$py" - "$run/metrics.jsonl" <<'PY'
import json, sys
evals = [json.loads(l) for l in open(sys.argv[1]) if '"eval_loss"' in l]
first, last = evals[0], evals[-1]
print(f"== validation loss: step {first['step']} {first['eval_loss']:.4f} -> step {last['step']} {last['eval_loss']:.4f}")
sys.exit(0 if last["eval_loss"] < first["eval_loss"] and last["step"] > first["step"] else 1)
PY

echo "check: loft merge (f32 folder), loft export gguf q8_0 of it" >&2
step "$loft" merge --model "$model" --adapter "$run/adapter" --out "$work/merged" --dtype f32 --threads "$threads"
step "$loft" export gguf --model "$work/merged" --quant q8_0 --out "$work/merged-q8_0.gguf" --threads "$threads"

loss() { "$loft" eval --max-tokens "$tokens" --json --threads "$threads" "$@" 2>>"$work/steps.log"; }
for t in apache ift; do
  file="$text"; [ "$t" = ift ] && file="$work/ift.txt"
  loss --text "$file" --model "$model" >"$work/$t-base.json"
  loss --text "$file" --model "$model" --adapter "$run/adapter" >"$work/$t-adapter.json"
  loss --text "$file" --model "$work/merged" >"$work/$t-merged.json"
  loss --text "$file" --model "$work/merged-q8_0.gguf" >"$work/$t-merged-q8_0.json"
done

echo "check: transformers on the merged folder, gguf-py on the q8_0 file" >&2
"$py" -W ignore - "$work" "$text" "$tokens" <<'PY'
import json, sys
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

logging.set_verbosity_error()
logging.disable_progress_bar()
torch.set_num_threads(2)
work, n = Path(sys.argv[1]), int(sys.argv[3])
texts = {"apache": Path(sys.argv[2]), "ift": work / "ift.txt"}
failures = []

folder = work / "merged"
config = json.loads((folder / "config.json").read_text())
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
print(f"transformers loaded {folder.name}/: {type(model).__name__}, model_type {config['model_type']}, "
      f"sliding_window {model.config.sliding_window}, query_pre_attn_scalar {model.config.query_pre_attn_scalar}, "
      f"{model.config.layer_types.count('full_attention')} global layers of {model.config.num_hidden_layers}, "
      f"tied {model.config.tie_word_embeddings}")
tokenizer = AutoTokenizer.from_pretrained(folder)


def row(what, loss, ref=None, limit=None):
    if ref is None:
        print(f"  {what:<50} {loss:>10.6f}")
        return
    rel = abs(loss - ref) / ref
    print(f"  {what:<50} {loss:>10.6f}   rel {rel:.1e} " + (f"(limit {limit:g})" if limit < 1 else "(reported)"))
    if rel > limit:
        failures.append(f"{what}: {loss:.6f} vs {ref:.6f}")


for name, path in texts.items():
    figure = {k: json.loads((work / f"{name}-{k}.json").read_text()) for k in ("base", "adapter", "merged", "merged-q8_0")}
    ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:n]
    if len(ids) != figure["merged"]["tokens"]:
        failures.append(f"{name}: transformers has {len(ids)} tokens, loft {figure['merged']['tokens']}")
    with torch.no_grad():
        hf = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    print(f"== mean next-token loss over the first {len(ids)} tokens of {path.name} (no BOS)")
    row("loft eval, base GGUF", figure["base"]["loss"])
    row("loft eval --adapter, base GGUF", figure["adapter"]["loss"])
    row("loft eval, merged f32 folder", figure["merged"]["loss"], figure["adapter"]["loss"], 1e-3)
    row("transformers, merged f32 folder", hf, figure["merged"]["loss"], 1e-3)
    # The must-show's limit on the Apache licence; on the short IFT text the figure is reported (see the header).
    q8_limit = 2e-3 if name == "apache" else float("inf")
    row("loft eval, merged q8_0 GGUF (loft export)", figure["merged-q8_0"]["loss"], figure["merged"]["loss"], q8_limit)
    print(f"  (the adapter moves the loss by {figure['adapter']['loss'] - figure['base']['loss']:+.4f})")

import gguf  # noqa: E402  (venv-peft, bench/peers/requirements.txt)

reader = gguf.GGUFReader(work / "merged-q8_0.gguf")
field = lambda k: reader.fields[k].contents()  # noqa: E731
types = Counter(t.tensor_type.name for t in reader.tensors)
print(f"gguf-py {gguf.__name__} read merged-q8_0.gguf: architecture {field('general.architecture')}, "
      f"{len(reader.tensors)} tensors ({', '.join(f'{k} {v}' for k, v in sorted(types.items()))}), "
      f"sliding_window {field('gemma3.attention.sliding_window')}, block_count {field('gemma3.block_count')}, "
      f"{len(field('tokenizer.ggml.tokens'))} tokens")
if field("general.architecture") != "gemma3":
    failures.append("general.architecture is not gemma3")
state = model.state_dict()
shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
if shapes.get("token_embd.weight") != tuple(state["model.embed_tokens.weight"].shape):
    failures.append(f"token_embd {shapes.get('token_embd.weight')} vs {tuple(state['model.embed_tokens.weight'].shape)}")
blocks = {n for n in shapes if n.startswith("blk.")}
if len(blocks) != 13 * model.config.num_hidden_layers:
    failures.append(f"{len(blocks)} block tensors, expected 13 per layer")
for failure in failures:
    print(f"MISMATCH: {failure}", file=sys.stderr)
sys.exit(1 if failures else 0)
PY
quantize="$cache/llama.cpp-0.3.36/build/bin/llama-quantize"
if [ -x "$quantize" ]; then
  echo "check: llama-quantize's Q8_0 of loft's f32 export against loft's q8_0" >&2
  step "$loft" export gguf --model "$work/merged" --quant f32 --out "$work/merged-f32.gguf" --threads "$threads"
  "$quantize" "$work/merged-f32.gguf" "$work/llama-q8_0.gguf" Q8_0 "$threads" >"$work/quantize.log" 2>&1
  "$py" - "$work/merged-q8_0.gguf" "$work/llama-q8_0.gguf" <<'PY'
import sys
import gguf
ours, theirs = ({t.name: t for t in gguf.GGUFReader(p).tensors} for p in sys.argv[1:3])
same = [n for n, t in ours.items() if n in theirs and t.tensor_type == theirs[n].tensor_type
        and bytes(t.data) == bytes(theirs[n].data)]
print(f"loft's q8_0 and llama-quantize's Q8_0: {len(same)} of {len(theirs)} tensors identical (type and bytes)")
sys.exit(0 if ours.keys() == theirs.keys() and len(same) == len(ours) else 1)
PY
  rm -f "$work/merged-f32.gguf" "$work/llama-q8_0.gguf"
else
  echo "(llama-quantize not built: scripts/check_export_llamacpp.sh build adds the Q8_0 byte comparison)"
fi
echo "(files and logs in $work; llama.cpp: LOFT_MODEL=$work/merged-q8_0.gguf scripts/check_export_llamacpp.sh)"
