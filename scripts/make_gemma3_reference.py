#!/usr/bin/env python3
"""Writes crates/loft/tests/fixtures/gemma3_270m/expected.json: what transformers computes on the real Gemma 3 270M
Q4_K_M GGUF (scripts/fetch.sh gemma3), loaded from that same file with `gguf_file=` (dequantized to float32, eager
attention, one thread), so tests/gemma3_real.rs pins loft's tokenizer, loss and greedy tokens against it without
torch:
  tokenizer   [{text, ids}]: GemmaTokenizer ids without special tokens (add_special_tokens=False)
  eval        {ids: [BOS] + ids of the text, loss: mean next-token NLL over them, nll: the first 16 of it}
  greedy      {prompt_ids: [BOS] + a prompt's ids, tokens: the next 16 greedy tokens (the cache reused)}

    bench/peers/venv.sh && pip install --target /tmp/gguf-pkg gguf==0.19.0 (transformers reads GGUF through it)
    PYTHONPATH=/tmp/gguf-pkg .cache/venv-peft/bin/python scripts/make_gemma3_reference.py
"""
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / ".cache/models"
GGUF = "gemma-3-270m-q4_k_m.gguf"
OUT = REPO / "crates/loft/tests/fixtures/gemma3_270m/expected.json"

TEXTS = [
    "Hello world",
    "  two leading spaces, and  two   inner ones",
    "line one\nline two\n\n\tindented\r\n",
    "Numbers 1234567 and 3.14159, symbols @#$%^&*()_+=~`|",
    "Unicode: café naïve Ærøskøbing 東京 서울 Привет 🙂👍🏽",
    "def f(x):\n    return x ** 2  # square\n",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "   ",
    "",
]

EVAL_TEXT = (
    "The history of mathematics deals with the origin of discoveries in mathematics and the mathematical methods "
    "and notation of the past. Before the modern age and the worldwide spread of knowledge, written examples of new "
    "mathematical developments have come to light only in a few locales. From 3000 BC the Mesopotamian states of "
    "Sumer, Akkad and Assyria, followed closely by Ancient Egypt and the Levantine state of Ebla began using "
    "arithmetic, algebra and geometry for purposes of taxation, commerce, trade and also in the patterns in nature."
)
PROMPT = "The three primary colors are"
GREEDY_NEW = 16


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (MODELS / GGUF).is_file():
        sys.exit(f"{MODELS / GGUF} is missing: run scripts/fetch.sh gemma3")
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=GGUF, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    bos = tok.bos_token_id
    tokenizer = [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids} for t in TEXTS]

    ids = [bos] + tok(EVAL_TEXT, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    nll = (torch.logsumexp(logits[:-1], -1) - logits[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]).tolist()

    prompt = [bos] + tok(PROMPT, add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=GREEDY_NEW, do_sample=False, min_new_tokens=GREEDY_NEW)
    greedy = out[0, len(prompt):].tolist()

    import transformers

    OUT.write_text(
        json.dumps(
            {
                "model": GGUF,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "tokenizer": tokenizer,
                "eval": {"text": EVAL_TEXT, "ids": ids, "loss": sum(nll) / len(nll), "nll": nll[:16]},
                "greedy": {"prompt": PROMPT, "prompt_ids": prompt, "tokens": greedy, "text": tok.decode(greedy)},
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {OUT}: eval loss {sum(nll) / len(nll):.6f} over {len(nll)} tokens; greedy {tok.decode(greedy)!r}")


if __name__ == "__main__":
    main()
