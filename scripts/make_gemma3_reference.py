#!/usr/bin/env python3
"""Writes crates/loft/tests/fixtures/gemma3_270m/expected.json: what transformers computes on the real Gemma 3 270M
Q4_K_M GGUF (scripts/fetch.sh gemma3), loaded from that same file with `gguf_file=` (dequantized to float32, eager
attention, one thread), so tests/gemma3_real.rs pins loft's tokenizer, loss and greedy tokens against it without
torch:
  tokenizer   [{text, ids}]: GemmaTokenizer ids without special tokens (add_special_tokens=False)
  eval        {ids: [BOS] + ids of the text, loss: mean next-token NLL over them, nll: the first 16 of it}
  greedy      {prompt_ids: [BOS] + a prompt's ids, tokens: the next 16 greedy tokens (the cache reused)}
  long        past the local layers' window (sliding_window 512): {ids: [BOS] + ids of a text of about 700
              tokens, loss, nll: every position's, loss_tail: the mean over the positions from 512 on,
              loss_tail_no_window: the same with the window widened past the text (what ignoring it would give),
              greedy: the next 16 greedy tokens after all of it (generate, checked against argmax over full
              forwards), min_top2_gap: the smallest gap between the best and second-best logit on the way}

    bench/peers/venv.sh && .cache/venv-peft/bin/python scripts/make_gemma3_reference.py
(venv.sh installs gguf, through which transformers reads GGUF files.)
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

# Written for this fixture: about 700 tokens, so that every position from 512 on has keys that Gemma 3's local
# layers no longer see. It ends mid-sentence, for the greedy continuation.
LONG_TEXT = """The lighthouse at the end of the northern breakwater was built in the spring of 1871, after two winters \
in which the harbour lost eleven boats to the rocks that lie just under the water at low tide. The first keeper was \
a retired ship's carpenter named Tobias Quill, who kept a logbook in a careful, slanting hand. His entries are short. \
Most of them record the weather, the number of vessels that passed, and the amount of oil burned in the lamp each \
night. A few record something else: a seal asleep on the lowest step, a storm that broke the glass of the lantern \
room, a child who rowed out alone to bring him bread when the town thought he had been washed away.

The lamp itself was a simple affair at first. Six wicks burned whale oil behind a ring of polished brass reflectors, \
and the light could be seen, on a clear night, about nine miles out. In 1884 the reflectors were replaced by a \
Fresnel lens made in Paris, a beehive of glass prisms taller than a man, which gathered the light into a single \
beam and turned it slowly on a bed of mercury. The keeper now had to wind a clockwork weight every four hours, day \
and night, so that the beam would sweep the water at the right speed. Ships learned to recognise the harbour by \
its rhythm: two flashes, a pause of six seconds, then one flash, repeated until dawn.

Keeping the light was lonely work, but it was not idle. The brass had to be polished, the wicks trimmed, the \
windows cleaned of salt each morning. In winter the spray froze on the gallery rail and had to be chipped away \
with a hammer. The keeper painted the tower every second summer, climbing down its side on a rope seat, and he \
mended the breakwater's stones when the sea pulled them loose. When fog came in, which happened on perhaps sixty \
days a year, he rang a bell by hand, once every twenty seconds, for as long as the fog lasted. One entry in the \
logbook, from November 1893, says only: "Fog. Bell. Fog. Bell. Thirty-one hours."

Electricity reached the tower in 1931, and with it an automatic lamp changer and a motor to turn the lens. The \
keepers stayed for another forty years, because machines fail and someone had to be there when they did. The last \
of them, a woman named Ada Brennan, left in 1972 with a small pension, a framed photograph of the tower, and the \
old logbooks, which she later gave to the town library. She said in an interview that she missed the bell more \
than anything else. The sound, she explained, had been a kind of company: each stroke told the boats out in the \
grey that someone was awake and listening for them.

Today the light is watched from a control room two hundred miles away. A camera on the gallery sends a picture \
every minute, and sensors report the state of the lamp, the batteries and the solar panels that now power them. \
The lens is still there, still turning on its bed of mercury, and visitors can climb the one hundred and \
twelve steps on the first Sunday of each month to see it. From the top, on a clear day, you can see the whole \
curve of the coast, the islands beyond it, and the line of rocks that started it all, breaking the swell into \
white foam. The guides tell the story of Tobias Quill and the bread, and of the fog that lasted thirty-one hours, \
and then they point to the horizon and ask the visitors to imagine the sea at night, with nothing on it but"""
LOCAL_WINDOW = 512


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

    long = long_text_reference(model, tok, bos)

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
                "long": long,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {OUT}: eval loss {sum(nll) / len(nll):.6f} over {len(nll)} tokens; greedy {tok.decode(greedy)!r}")
    print(
        f"long text: {len(long['ids'])} ids, loss {long['loss']:.6f}; positions from {LOCAL_WINDOW}: "
        f"{long['loss_tail']:.6f} (without the window {long['loss_tail_no_window']:.6f}); greedy "
        f"{long['greedy_text']!r} (top-2 gap >= {long['min_top2_gap']:.3f})"
    )


def next_token_nll(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return (torch.logsumexp(logits[:-1], -1) - logits[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]).tolist()


def long_text_reference(model, tok, bos):
    """The long text's per-position NLL, its greedy continuation, and what the local layers' window changes."""
    if model.config.sliding_window != LOCAL_WINDOW:
        raise RuntimeError(f"sliding_window {model.config.sliding_window}, expected {LOCAL_WINDOW}")
    ids = [bos] + tok(LONG_TEXT, add_special_tokens=False).input_ids
    if not LOCAL_WINDOW + 100 < len(ids) < 1000:
        raise RuntimeError(f"the long text has {len(ids)} ids; it should reach well past {LOCAL_WINDOW}")
    nll = next_token_nll(model, ids)
    # nll[t] predicts ids[t + 1] from positions 0..=t: from t = LOCAL_WINDOW on, local layers drop early keys.
    tail = nll[LOCAL_WINDOW:]
    model.config.sliding_window = 4096
    try:
        wide = next_token_nll(model, ids)[LOCAL_WINDOW:]
    finally:
        model.config.sliding_window = LOCAL_WINDOW
    if nll[:LOCAL_WINDOW] != next_token_nll(model, ids[: LOCAL_WINDOW + 1]):
        raise RuntimeError("the first positions' NLL depends on later tokens")

    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=GREEDY_NEW, do_sample=False, min_new_tokens=GREEDY_NEW
        )[0, len(ids):].tolist()
        seq, margin = list(ids), float("inf")
        for _ in range(GREEDY_NEW):
            top = model(torch.tensor([seq])).logits[0, -1].topk(2)
            seq.append(int(top.indices[0]))
            margin = min(margin, float(top.values[0] - top.values[1]))
    if seq[len(ids):] != out:
        raise RuntimeError(f"generate {out} differs from argmax over full forwards {seq[len(ids):]}")
    return {
        "text": LONG_TEXT,
        "ids": ids,
        "loss": sum(nll) / len(nll),
        "nll": nll,
        "loss_tail": sum(tail) / len(tail),
        "loss_tail_no_window": sum(wide) / len(wide),
        "greedy": out,
        "greedy_text": tok.decode(out),
        "min_top2_gap": margin,
    }


if __name__ == "__main__":
    main()
