"""Loads what `loft merge` writes with transformers + PEFT and scores it; run by scripts/check_export_transformers.sh.

Every loss is the mean next-token loss over the first 2,000 tokens of the Apache licence, computed on the CPU in
float32 (the f16 folder is upcast when loaded). Two tokenizations of the text are in play, and figures are only
compared within one:
  - the reference ids: what transformers gets from the GGUF, which ignores `tokenizer.ggml.pre` (loft:
    `--tokenizer-pre gpt-2`); transformers' rows are compared with `loft eval --adapter --tokenizer-pre gpt-2`;
  - the folder's ids: what the merged folder's tokenizer.json gives, the GGUF's own `smollm` pre-tokenizer (digits
    split off first); `loft eval` of the folders is compared with `loft eval --adapter` without --tokenizer-pre,
    and with transformers on the folder's own ids.
f32 exports must agree within 1e-3, the f16 export within 1e-2; exit status 1 when a figure or a check disagrees.
"""

import argparse
import json
import sys

import torch

F32_TOLERANCE = 1e-3
F16_TOLERANCE = 1e-2


def mean_loss(model, ids):
    # ids: [T]; transformers shifts the labels itself, so this is the mean over T-1 predictions.
    with torch.no_grad():
        return model(input_ids=ids[None], labels=ids[None]).loss.item()


def load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def check_folder_files(tokenizer, folder, text, reference, failures):
    """The tokenizer, chat template and EOS that a merged folder carries, against the reference.
    Returns the folder tokenizer's ids of the text, as many as the reference has."""
    from transformers import GenerationConfig

    want = reference["apache_2_0_text"]["token_ids"]
    got = tokenizer(text, add_special_tokens=False)["input_ids"]
    if got[: len(want)] == want:
        print(f"tokenizer: the first {len(want)} ids of the text equal the reference")
    else:
        # Not a failure: the reference is transformers' GGUF tokenizer, which ignores the GGUF's `smollm`
        # pre-tokenizer; the folder keeps it. The loss rows on the folder's ids check that loft agrees.
        first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        pieces = lambda ids: [tokenizer.decode([t]) for t in ids]  # noqa: E731
        print(f"NOTE tokenizer: the folder's ids differ from the reference from position {first}: it splits "
              f"{pieces(got[first:first + 2])}, the reference {pieces(want[first:first + 3])}; "
              f"whole text: {len(got)} ids, reference {reference['apache_2_0_text']['tokens_in_file']}")

    chat = reference["chat_greedy"]
    if not tokenizer.chat_template:
        failures.append("tokenizer.chat_template is missing")
    else:
        prompt = tokenizer.apply_chat_template(chat["messages"], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        if list(prompt) == chat["prompt_ids"]:
            print(f"chat template: renders the reference prompt ({len(prompt)} ids)")
        else:
            failures.append(f"chat template: renders {list(prompt)}, the reference is {chat['prompt_ids']}")

    generation = GenerationConfig.from_pretrained(folder)
    eos = generation.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    if None in eos or tokenizer.eos_token_id not in eos:
        failures.append(f"generation_config.eos_token_id is {generation.eos_token_id}, "
                        f"the tokenizer's EOS {tokenizer.eos_token!r} is {tokenizer.eos_token_id}")
    else:
        print(f"generation_config.eos_token_id: {generation.eos_token_id} ({tokenizer.eos_token!r})")
    return torch.tensor(got[: len(want)])


def greedy_answer(model, tokenizer, chat, failures):
    """The base model's greedy answer to the reference question, stopped by generation_config's EOS."""
    prompt = torch.tensor([chat["prompt_ids"]])
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=len(chat["greedy_ids"]) + 8)
    answer = out[0, prompt.shape[1]:].tolist()
    if answer == chat["greedy_ids"]:
        print(f"base folder, greedy chat answer: {tokenizer.decode(answer)!r} (as the reference)")
    else:
        failures.append(f"base folder, greedy chat answer {tokenizer.decode(answer)!r} {answer}, "
                        f"the reference {chat['text']!r} {chat['greedy_ids']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="shared/reference/smollm2-135m.json")
    parser.add_argument("--text", required=True, help="apache-2.0.txt")
    parser.add_argument("--base", required=True, help="`loft merge` of the base alone, f32")
    parser.add_argument("--adapter", required=True, help="the PEFT adapter folder")
    parser.add_argument("--merged-f32", required=True)
    parser.add_argument("--merged-f16", required=True)
    parser.add_argument("--loft-adapter-gpt2", required=True, help="`loft eval --adapter --tokenizer-pre gpt-2 --json`")
    parser.add_argument("--loft-adapter", required=True, help="`loft eval --adapter --json` (the GGUF's pre-tokenizer)")
    parser.add_argument("--loft-merged-f32", required=True, help="`loft eval --json` of the f32 folder")
    parser.add_argument("--loft-merged-f16", required=True, help="`loft eval --json` of the f16 folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from peft import PeftModel
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()

    with open(args.reference) as f:
        reference = json.load(f)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    ids = torch.tensor(reference["apache_2_0_text"]["token_ids"])  # [T], T = 2000
    failures = []

    print(f"== {args.merged_f32}")
    tokenizer = AutoTokenizer.from_pretrained(args.merged_f32)
    folder_ids = check_folder_files(tokenizer, args.merged_f32, text, reference, failures)  # [T]

    base = load(args.base)
    greedy_answer(base, AutoTokenizer.from_pretrained(args.base), reference["chat_greedy"], failures)
    base_loss = mean_loss(base, ids)
    peft_loss = mean_loss(PeftModel.from_pretrained(base, args.adapter).eval(), ids)
    del base
    merged = load(args.merged_f32)
    merged_f32, merged_f32_folder_ids = mean_loss(merged, ids), mean_loss(merged, folder_ids)
    del merged
    merged_f16 = mean_loss(load(args.merged_f16), ids)

    def loft(path):
        with open(path) as f:
            v = json.load(f)
        if v["tokens"] != len(ids):
            failures.append(f"{path}: loft scored {v['tokens']} tokens, not {len(ids)}")
        return v["loss"]

    # (what, loss, tolerance against the group's first row, the loft --adapter figure; None: the anchor)
    groups = [
        ("the reference ids (transformers' GGUF tokenizer; loft --tokenizer-pre gpt-2)", [
            ("loft eval --adapter, GGUF base, --tokenizer-pre gpt-2", loft(args.loft_adapter_gpt2), None),
            ("transformers, merged f32 folder", merged_f32, F32_TOLERANCE),
            ("transformers, base f32 folder + PEFT adapter", peft_loss, F32_TOLERANCE),
            ("transformers, merged f16 folder (f32 compute)", merged_f16, F16_TOLERANCE),
        ]),
        ("the folder's ids (its tokenizer.json; the GGUF's own smollm pre-tokenizer)", [
            ("loft eval --adapter, GGUF base", loft(args.loft_adapter), None),
            ("transformers, merged f32 folder", merged_f32_folder_ids, F32_TOLERANCE),
            ("loft eval, merged f32 folder", loft(args.loft_merged_f32), F32_TOLERANCE),
            ("loft eval, merged f16 folder", loft(args.loft_merged_f16), F16_TOLERANCE),
        ]),
    ]
    print(f"\n== mean next-token loss over the first {len(ids)} tokens of {args.text.rsplit('/', 1)[-1]}")
    print(f"{'':<54} {'loss':>10} {'Δ vs loft --adapter':>20}")
    worst = {F32_TOLERANCE: 0.0, F16_TOLERANCE: 0.0}
    for title, rows in groups:
        print(f"-- on {title}")
        anchor = rows[0][1]
        for what, loss, tolerance in rows:
            delta = loss - anchor
            print(f"{what:<54} {loss:>10.6f} {'' if tolerance is None else f'{delta:+.2e}':>20}")
            if tolerance is not None:
                worst[tolerance] = max(worst[tolerance], abs(delta))
                if abs(delta) > tolerance:
                    failures.append(f"{what}: {loss:.6f}, loft --adapter {anchor:.6f} "
                                    f"(|Δ| {abs(delta):.2e} > {tolerance})")
    fp32_reference = reference["apache_2_0_text"]["mean_next_token_loss_fp32"]
    print(f"-- context\n{'transformers, base f32 folder, no adapter':<54} {base_loss:>10.6f}   "
          f"(transformers on the GGUF: {fp32_reference:.6f})")
    print(f"max |Δ| vs loft --adapter: f32 exports {worst[F32_TOLERANCE]:.2e} (limit {F32_TOLERANCE}), "
          f"f16 export {worst[F16_TOLERANCE]:.2e} (limit {F16_TOLERANCE})")
    print(f"the adapter moves the loss by {peft_loss - base_loss:+.4f} from the base (reference ids)")
    if abs(base_loss - fp32_reference) > F32_TOLERANCE:
        failures.append(f"base folder: loss {base_loss:.6f}, transformers on the GGUF {fp32_reference:.6f}")

    for failure in failures:
        print(f"MISMATCH: {failure}", file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
