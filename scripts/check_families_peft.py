"""Loads the adapters `loft train` wrote for the tiny families with PEFT and scores them; run by
scripts/check_families_peft.sh.

Each run is FAMILY:VARIANT; the shell script left <work>/FAMILY-base.json (`loft eval --json` of the folder alone)
and <work>/FAMILY-VARIANT/{adapter/, eval.json} (`loft eval --adapter --json`). Here transformers scores the first
--max-tokens ids of the text (the folder's tokenizer, no special tokens) with the folder alone and with
`PeftModel.from_pretrained(folder, adapter)`, in float32 with eager attention on the CPU. Exit status 1 when a loss is
more than 1e-4 (relative) from loft's, when the token counts differ, or when an adapter moves the loss by less than
100 times the tolerance.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

TOLERANCE = 1e-4


def mean_loss(model, ids):
    # ids: [T]; transformers shifts the labels itself: the mean over T-1 predictions, as `loft eval`.
    with torch.no_grad():
        return model(input_ids=ids[None], labels=ids[None]).loss.item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--text", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, required=True)
    parser.add_argument("runs", nargs="+", help="FAMILY:VARIANT")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    text = args.text.read_text(encoding="utf-8")
    failures = []

    def loft(path):
        return json.loads(path.read_text())

    def load(hf):
        return AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, attn_implementation="eager").eval()

    def compare(what, loft_figure, ours):
        rel = abs(ours - loft_figure["loss"]) / loft_figure["loss"]
        print(f"{what:<40} {loft_figure['loss']:>10.6f} {ours:>14.6f} {rel:>10.1e}")
        if rel > TOLERANCE:
            failures.append(f"{what}: loft {loft_figure['loss']:.6f}, transformers {ours:.6f} (rel {rel:.1e})")
        return rel

    print(f"mean next-token loss over the first {args.max_tokens} tokens of {args.text.name}")
    print(f"{'':<40} {'loft eval':>10} {'transformers':>14} {'rel diff':>10}")
    worst, seen_base = 0.0, {}
    for run in args.runs:
        family, variant = run.split(":")
        hf = args.fixtures / family / "hf"
        ids = torch.tensor(AutoTokenizer.from_pretrained(hf)(text, add_special_tokens=False)["input_ids"])
        ids = ids[: args.max_tokens]  # [T]
        if family not in seen_base:
            figure = loft(args.work / f"{family}-base.json")
            if figure["tokens"] != len(ids):
                failures.append(f"{family}: loft scored {figure['tokens']} tokens, transformers {len(ids)}")
            seen_base[family] = mean_loss(load(hf), ids)
            worst = max(worst, compare(f"{family}, base", figure, seen_base[family]))
        adapter = args.work / f"{family}-{variant}" / "adapter"
        peft_loss = mean_loss(PeftModel.from_pretrained(load(hf), adapter).eval(), ids)
        worst = max(worst, compare(f"{family}, {variant} adapter (PEFT)", loft(adapter.parent / "eval.json"), peft_loss))
        moved = abs(peft_loss - seen_base[family]) / seen_base[family]
        if moved < 100 * TOLERANCE:
            failures.append(f"{family} {variant}: the adapter moves the loss by only {moved:.1e} (relative)")
        print(f"{'':<40} (the adapter moves the loss by {peft_loss - seen_base[family]:+.4f})")
    print(f"max relative difference: {worst:.1e} (limit {TOLERANCE})")
    for failure in failures:
        print(f"MISMATCH: {failure}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
