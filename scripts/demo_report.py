"""Writes runs/demo/report.md from what `scripts/demo.sh` left in the run folder (Python standard library only):
data and settings of each stage, time and peak memory, validation loss before and after, the loss graphs, the
answers of every model side by side, and where the exported files are.

usage: demo_report.py RUN_DIR SCALE MAX_NEW_TOKENS
"""

import json
import os
import sys

STAGES = [
    ("cpt", "CPT on Korean law text", "konlpy 0.6.0: the Korean constitution and 10 Korean bills (kolaw, kobill)"),
    (
        "cpt-ift",
        "IFT from the CPT adapter",
        "champ-dataset 1.0.0: 270 maths problems with step-wise solutions; chitchat-dataset 0.9.0: 267 questions "
        "answered in a sentence (Alpaca records, scripts/prepare_data.py)",
    ),
    ("ift", "IFT from the base alone (ablation)", "the same data and split"),
]
MODELS = [("base", "base"), ("cpt", "CPT"), ("ift", "IFT"), ("cpt-ift", "CPT+IFT")]


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def config_value(run, section, key):
    """A value from the run's resolved config.toml (simple `key = value` lines)."""
    current = None
    with open(os.path.join(run, "config.toml"), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("["):
                current = line.strip("[]")
            elif current == section and line.startswith(key + " ="):
                return line.split("=", 1)[1].strip()
    return "?"


def cell(text):
    return text.replace("|", "\\|").replace("\n", "<br>").strip() or "(empty)"


def main():
    out, scale, tokens = sys.argv[1], sys.argv[2], sys.argv[3]
    lines = [f"# loft demo report ({scale} scale)", ""]
    lines += [
        "The home fine-tuning experiment on SmolLM2-135M-Instruct (Q4_1 GGUF, trained on its own 4-bit blocks):",
        "continued pre-training on Korean text, instruction fine-tuning from it, the same IFT from the base alone,",
        "and the same questions to every model.",
        "",
        "## Stages",
        "",
        "| stage | data | examples (train / validation) | trained tokens | steps | settings | time | peak memory | validation loss: start → end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, title, source in STAGES:
        run = os.path.join(out, name)
        s = json.load(open(os.path.join(run, "train_summary.json")))
        evals = [m for m in load_jsonl(os.path.join(run, "metrics.jsonl")) if "eval_loss" in m]
        first, last = evals[0], evals[-1]
        arrow = "falls" if last["eval_loss"] < first["eval_loss"] else "does NOT fall"
        settings = ", ".join(
            [
                f"r {config_value(run, 'lora', 'r')}",
                f"alpha {config_value(run, 'lora', 'lora_alpha')}",
                f"rsLoRA {config_value(run, 'lora', 'use_rslora')}",
                f"targets {config_value(run, 'lora', 'target_modules')}",
                f"lr {config_value(run, 'train', 'learning_rate')}",
                f"embedding lr {config_value(run, 'train', 'embedding_learning_rate')}",
                f"batch {config_value(run, 'train', 'per_device_train_batch_size')}"
                f"×{config_value(run, 'train', 'gradient_accumulation_steps')}",
                f"max_seq_length {config_value(run, 'model', 'max_seq_length')}",
                f"{config_value(run, 'train', 'optim')}",
                f"{config_value(run, 'train', 'lr_scheduler_type')} schedule",
            ]
        )
        lines.append(
            f"| {title} (`{run}`) | {source} | {s['train_examples']} / {s['validation_examples']} | "
            f"{s['target_tokens']} | {s['steps']} | {cell(settings)} | {s['seconds']:.0f} s | "
            f"{(s['peak_rss_bytes'] or 0) / 2**20:.0f} MiB | "
            f"{first['eval_loss']:.3f} (step {first['step']}) → {last['eval_loss']:.3f} (step {last['step']}): {arrow} |"
        )
    lines += [
        "",
        "## Loss graphs",
        "",
        "![CPT loss](cpt-loss.png)",
        "",
        "![IFT alone vs CPT+IFT](ift-vs-cpt-ift.png)",
        "",
        "## The inference test",
        "",
        f"Each question in the IFT format (Alpaca's prompt), greedy with repetition penalty 1.1, at most {tokens} new tokens. ⏹ = the model ended its",
        "answer with EOS; ✂ = cut at the token limit.",
        "",
    ]
    answers = load_jsonl(os.path.join(out, "answers.jsonl"))
    questions = []
    for a in answers:
        if a["question"] not in questions:
            questions.append(a["question"])
    lines.append("| question | " + " | ".join(label for _, label in MODELS) + " |")
    lines.append("|---" * (len(MODELS) + 1) + "|")
    stops = {m: 0 for m, _ in MODELS}
    for q in questions:
        row = [cell(q)]
        for m, _ in MODELS:
            a = next((x for x in answers if x["question"] == q and x["model"] == m), None)
            if a is None:
                row.append("—")
                continue
            stopped = "stopped at --max-new-tokens" not in a["stats"]
            stops[m] += stopped
            row.append(("⏹ " if stopped else "✂ ") + cell(a["answer"]))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "Answers ended with EOS: "
        + ", ".join(f"{label} {stops[m]}/{len(questions)}" for m, label in MODELS)
        + "."
    )
    merged = open(os.path.join(out, "check-merged.txt"), encoding="utf-8").read().strip()
    gguf = open(os.path.join(out, "check-gguf.txt"), encoding="utf-8").read().strip()
    common = 0
    for a, b in zip(merged.split(), gguf.split()):
        if a != b:
            break
        common += 1
    same = (
        "the same answer"
        if merged == gguf
        else f"answers that agree on their first {common} words (q8_0 rounding moves a greedy choice after that)"
    )
    lines += [
        "",
        "## Exported files",
        "",
        f"- PEFT adapters: `{out}/cpt/adapter`, `{out}/cpt-ift/adapter` (stack them in that order: "
        f"`loft generate --adapter {out}/cpt/adapter --adapter {out}/cpt-ift/adapter …`), and `{out}/ift/adapter`",
        f"- merged CPT+IFT model, Hugging Face folder in f16: `{out}/merged`",
        f"- q8_0 GGUF of CPT+IFT for llama.cpp / Ollama: `{out}/cpt-ift.q8_0.gguf`",
        "",
        "The same text (the first 1,024 tokens of the Korean constitution) scored by the trained model and by both "
        "exports, `loft eval`:",
        "",
        "| model | loss | perplexity |",
        "|---|---|---|",
    ]
    for rec in load_jsonl(os.path.join(out, "check-loss.jsonl")):
        lines.append(f"| {rec['model']} | {rec['eval']['loss']:.4f} | {rec['eval']['perplexity']:.3f} |")
    lines += [
        "",
        f"Loaded back with `loft generate`, greedy, \"Describe the planet Earth.\": the merged folder and the GGUF give {same}.",
        "",
        f"- merged: {cell(merged)}",
        f"- GGUF q8_0: {cell(gguf)}",
        "",
    ]
    seconds_file = os.path.join(out, "demo-seconds.txt")
    if os.path.exists(seconds_file):
        secs = int(open(seconds_file).read().strip() or 0)
        lines += [f"The run took {secs // 60} min {secs % 60} s after fetching and building (stages done before a re-run count as 0).", ""]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
