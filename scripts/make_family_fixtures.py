#!/usr/bin/env python3
"""Builds crates/loft/tests/fixtures/families/<family>/: per model family, a tiny random model as transformers saves
it, the same weights as a GGUF written by llama.cpp's own converter, a batch, transformers' loss, logits and greedy
tokens, and two PEFT LoRA adapters with PEFT's loss, logits and gradients, so loft is pinned against transformers,
PEFT and llama.cpp's naming for each family (tests/families_reference.rs).

    bench/peers/venv.sh && .cache/venv-peft/bin/python scripts/make_family_fixtures.py [FAMILY ...]

The GGUF comes from llama.cpp's convert_hf_to_gguf.py code (the `conversion` package and gguf-py of the
llama-cpp-python 0.3.36 sources that scripts/check_export_llamacpp.sh unpacks into .cache/llama.cpp-0.3.36), run
in this process on the saved folder with --outtype f32. One method is replaced: `get_vocab_base_pre`, which
recognises a real tokenizer by hashing how it splits a test text and refuses one it does not know (the tiny
tokenizer here); it returns "gpt-2", the split the tiny tokenizer uses. A family may add keys the converter does not
write (FAMILIES[...].gguf_keys), named in the fixture's README.

Deterministic (fixed seeds, float32, eager attention, one thread). Writes per family:
  hf/                        config.json, generation_config.json, model.safetensors (save_pretrained),
                             tokenizer.json + tokenizer_config.json (a 64-token byte-level BPE)
  model.gguf                 llama.cpp's converter on hf/, f32
  adapter/                   PEFT LoRA r4 alpha8 on q,k,v,o,gate,up,down
  adapter_rslora_embed/      same with use_rslora and modules_to_save=[embed_tokens, lm_head]
  batch.json                 input_ids / attention_mask / labels [2, 12]
  expected.safetensors       f32: base/{loss, logits}, <adapter>/{loss, logits, grad/<PEFT key>}
  expected.json              losses, greedy continuation, saved keys, versions, GGUF keys
  README.md

A new family is one more entry in FAMILIES.
"""

import argparse
import json
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates/loft/tests/fixtures/families"
LLAMA_CPP = REPO / ".cache/llama.cpp-0.3.36/src"

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B, T = 2, 12
GREEDY_PROMPT, GREEDY_NEW = 5, 8

# The shape every family shares unless its entry says otherwise: GQA (4 heads over 2 kv heads), 2 layers.
TINY = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=4,
    hidden_act="silu",
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def init_weights(name: str, p: torch.Tensor) -> torch.Tensor:
    """Scales larger than HF's 0.02 so attention is far from uniform and every path moves the numbers."""
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn_like(p)
    if name.endswith("embed_tokens.weight"):
        return 0.25 * torch.randn_like(p)
    if name.endswith(".bias"):
        return 0.1 * torch.randn_like(p)
    if p.dim() == 2:
        return torch.randn_like(p) / p.shape[1] ** 0.5
    raise RuntimeError(f"no initialisation for {name} {tuple(p.shape)}")


def init_gemma_weights(name: str, p: torch.Tensor) -> torch.Tensor:
    """Gemma's RMSNorms multiply by (1 + w): w near 0, so each of its four norms per layer keeps the scale."""
    if name.endswith("norm.weight"):
        return 0.1 * torch.randn_like(p)
    return init_weights(name, p)


@dataclass(frozen=True)
class Family:
    """One fixture: a transformers `model_type` with overrides of TINY, and what it is there to exercise."""

    model_type: str
    config: dict
    seed: int
    what: str
    # Keys written into the GGUF beside the converter's (name -> (value, why the converter leaves it out)).
    gguf_keys: dict = field(default_factory=dict)
    # Initialisation of each base parameter (name, tensor) -> new values.
    init: Callable[[str, torch.Tensor], torch.Tensor] = init_weights
    # Keys of TINY this model type does not have (Gemma 3 names its activation `hidden_activation`).
    omit: tuple = ()


FAMILIES = {
    "qwen2": Family(
        "qwen2",
        dict(tie_word_embeddings=False, use_sliding_window=False),
        101,
        "Qwen2/2.5: biases on q/k/v, untied head",
    ),
    "qwen2_tied": Family(
        "qwen2",
        dict(tie_word_embeddings=True, use_sliding_window=False),
        102,
        "Qwen2/2.5: biases on q/k/v, tied head (as Qwen2.5-0.5B)",
    ),
    "qwen3": Family(
        "qwen3",
        dict(tie_word_embeddings=True, head_dim=8, use_sliding_window=False),
        103,
        "Qwen3: per-head q/k RMSNorm, head_dim 8 apart from hidden / heads = 4, tied head",
    ),
    "mistral": Family(
        "mistral",
        dict(tie_word_embeddings=False, sliding_window=None),
        104,
        "Mistral without a window (v0.2 and later): Llama's block, untied head; GGUF Q/K rows permuted",
    ),
    # The same weights as "mistral" (same seed) with a window of 4 < T = 12: the first 4 positions of each row
    # have mistral's logits, the later ones differ (checked below).
    "mistral_window": Family(
        "mistral",
        dict(tie_word_embeddings=False, sliding_window=4),
        104,
        "Mistral v0.1 style: sliding_window 4 < T 12 (each query sees itself and the 3 positions before it)",
        gguf_keys={
            "llama.attention.sliding_window": (
                4,
                "llama.cpp's converter maps MistralForCausalLM to its `llama` architecture and drops "
                "sliding_window (llama.cpp runs Mistral without a window); added under llama.cpp's key name "
                "so that the GGUF is the same model as hf/",
            )
        },
    ),
    # Gemma 3 270M's layout at the tiny scale: 6 layers, of which the last is global (every 6th) and the others local
    # with a window of 4 < T = 12; MQA (4 heads, 1 kv head); tied head; head_dim 8 apart from hidden / heads; query_pre_attn_scalar 32 apart
    # from head_dim (as in Gemma 3 27B), which a GGUF cannot say (llama.cpp takes 1/sqrt(head_dim) below 62
    # layers): tests/families_reference.rs reads it from config.json and checks the GGUF's weights with it.
    "gemma3": Family(
        "gemma3_text",
        dict(
            num_hidden_layers=6,
            num_key_value_heads=1,
            head_dim=8,
            tie_word_embeddings=True,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=32,
            sliding_window=4,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
            },
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
        ),
        106,
        "Gemma 3 (text): embeddings x sqrt(hidden), (1 + w) RMSNorms before and after attention and MLP, per-head "
        "q/k norm, GeGLU (tanh GELU), MQA, query_pre_attn_scalar 32 apart from head_dim 8, 6 layers of which layers "
        "0-4 are local (sliding_window 4 < T 12, RoPE base 1e4) and layer 5 global (RoPE base 1e6), tied head",
        init=init_gemma_weights,
        omit=("hidden_act",),
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# The tiny tokenizer: byte-level BPE (GPT-2's split) over lowercase text, 64 ids, three ChatML specials.

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ("Ġ", "a"), ("o", "n"), ("r", "e"),
    ("a", "t"), ("e", "n"), ("Ġ", "s"), ("Ġ", "w"), ("o", "r"), ("e", "s"), ("Ġ", "o"), ("Ġ", "c"), ("i", "t"),
    ("i", "s"), ("in", "g"), ("n", "d"), ("Ġa", "nd"), ("e", "d"), ("Ġ", "f"), ("o", "u"), ("Ġ", "b"), ("a", "l"),
    ("a", "r"), ("Ġ", "p"), ("Ġ", "m"), ("l", "e"),
]


def write_tokenizer(folder: Path, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["Ġ", "Ċ", ".", ","] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for s in chars + [a + b for a, b in MERGES]:
        vocab[s] = len(vocab)
    assert len(vocab) == vocab_size, f"tiny tokenizer has {len(vocab)} ids, the model {vocab_size}"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=TINY[
            "max_position_embeddings"]
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(folder)
    ids = fast("the cat and the dog.", add_special_tokens=False)["input_ids"]
    if fast.decode(ids) != "the cat and the dog.":
        raise RuntimeError(f"tiny tokenizer does not round-trip: {ids} -> {fast.decode(ids)!r}")


# ---------------------------------------------------------------------------------------------------------------
# The base model, the batch, transformers' numbers


def build_base_model(family: Family):
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in {**TINY, **family.config}.items() if k not in family.omit}
    config = AutoConfig.for_model(family.model_type, **kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(family.seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(family.init(name, p))
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if tied != bool(config.tie_word_embeddings):
        raise RuntimeError(f"tie_word_embeddings={config.tie_word_embeddings} but the head is tied: {tied}")
    return model.eval()


def load_base(hf_dir: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype, attn_implementation="eager").eval()


def make_batch(seed: int, vocab: int):
    g = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(0, vocab, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    labels = input_ids.clone()
    labels[0, :3] = -100
    labels[1, :5] = -100
    return input_ids, attention_mask, labels


def greedy(model, prompt: torch.Tensor):
    """transformers' greedy continuation (with its KV cache), checked against argmax over full forwards; also the
    smallest gap between the best and the second-best logit along the way (what a numerical error must exceed to
    change a token)."""
    model.generation_config.eos_token_id = None  # a random model: run all GREEDY_NEW steps
    with torch.no_grad():
        out = model.generate(
            prompt[None], attention_mask=torch.ones_like(prompt)[None], do_sample=False,
            max_new_tokens=GREEDY_NEW, pad_token_id=0,
        )[0, len(prompt):].tolist()
        ids, margin = prompt.tolist(), float("inf")
        for _ in range(GREEDY_NEW):
            top = model(input_ids=torch.tensor([ids])).logits[0, -1].topk(2)
            ids.append(int(top.indices[0]))
            margin = min(margin, float(top.values[0] - top.values[1]))
    if ids[len(prompt):] != out:
        raise RuntimeError(f"generate {out} differs from argmax over full forwards {ids[len(prompt):]}")
    return {"prompt": prompt.tolist(), "tokens": out, "min_top2_gap": margin}


# ---------------------------------------------------------------------------------------------------------------
# The GGUF, by llama.cpp's converter


def convert_to_gguf(hf_dir: Path, out_file: Path, family: Family):
    if not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(
            f"error: no {LLAMA_CPP}/convert_hf_to_gguf.py\n"
            "hint: unpack vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist there, as the first step of "
            "scripts/check_export_llamacpp.sh does: pip download --no-deps --no-binary llama-cpp-python "
            "llama-cpp-python==0.3.36 -d /tmp/sdist && mkdir -p .cache/llama.cpp-0.3.36/src && tar xzf "
            "/tmp/sdist/llama_cpp_python-0.3.36.tar.gz -C .cache/llama.cpp-0.3.36/src --strip-components=3 "
            "llama_cpp_python-0.3.36/vendor/llama.cpp"
        )
    for p in (str(LLAMA_CPP / "gguf-py"), str(LLAMA_CPP)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import logging

    import gguf
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    logging.getLogger("hf-to-gguf").setLevel(logging.WARNING)
    hparams = ModelBase.load_hparams(hf_dir, False)
    converter = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
    extra = family.gguf_keys

    def get_vocab_base_pre(self, tokenizer):
        return "gpt-2"  # the tiny tokenizer's split; its hash is in no table

    def set_gguf_parameters(self):
        converter.set_gguf_parameters(self)
        for key, (value, _) in extra.items():
            if not isinstance(value, int):
                raise RuntimeError(f"{key}: only integer keys are written")
            self.gguf_writer.add_uint32(key, value)

    tiny = type(
        converter.__name__,
        (converter,),
        {
            "model_arch": converter.model_arch,
            "get_vocab_base_pre": get_vocab_base_pre,
            "set_gguf_parameters": set_gguf_parameters,
        },
    )
    with torch.inference_mode():
        model = tiny(hf_dir, gguf.LlamaFileType.ALL_F32, out_file, eager=True, model_name="tiny-" + family.model_type)
        model.write()

    reader = gguf.GGUFReader(out_file)
    keys = {}
    for f in reader.fields.values():
        if f.name.startswith("tokenizer.ggml.") and f.name not in ("tokenizer.ggml.model", "tokenizer.ggml.pre"):
            continue
        keys[f.name] = f.contents()
    tensors = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    return converter.__module__ + "." + converter.__name__, keys, tensors


# ---------------------------------------------------------------------------------------------------------------
# PEFT


def peft_key(param_name: str, adapter_name: str = "default") -> str:
    """The key PEFT's save_pretrained writes for a trainable parameter (it drops the adapter name)."""
    name = param_name.replace(f".modules_to_save.{adapter_name}.", ".")
    return name.replace(f".{adapter_name}.", ".")


def run_adapter(family, out, name, lora_kwargs, perturb_saved_modules, batch, tensors, summary):
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors import safe_open

    hf_dir = out / "hf"
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES, bias="none", task_type="CAUSAL_LM",
        **lora_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(load_base(hf_dir), config)
    torch.manual_seed(family.seed + 2 + len(summary["adapters"]))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.copy_(0.1 * torch.randn_like(p))  # PEFT initialises B to zero: make every gradient non-zero
            elif perturb_saved_modules and "modules_to_save" in pname:
                p.add_(0.05 * torch.randn_like(p))  # so the adapter's copy, not the base's, must be used
    model.eval()

    adapter_dir = out / name
    model.peft_config["default"].base_model_name_or_path = "../hf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(adapter_dir, safe_serialization=True)
    (adapter_dir / "README.md").unlink()  # PEFT's model-card template, with this machine's path in it
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])  # written from a set
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")

    input_ids, attention_mask, labels = batch
    fwd = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    fwd.loss.backward()

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        saved = {k: f.get_tensor(k) for k in sorted(f.keys())}
    grads = {}
    for pname, p in trainable.items():
        key = peft_key(pname)
        if p.grad is None or key in grads:
            raise RuntimeError(f"{name}: no gradient for {pname}, or two parameters map to {key}")
        if not torch.equal(saved[key], p.detach()):
            raise RuntimeError(f"{name}: saved {key} differs from the live parameter")
        if "embed_tokens" not in key and not (p.grad != 0).all():  # unused embedding rows have zero gradient
            raise RuntimeError(f"{name}: {key} has zero gradient entries")
        grads[key] = p.grad.detach().clone()
    if sorted(grads) != sorted(saved):
        raise RuntimeError(f"{name}: saved keys {sorted(saved)} and trainable parameters {sorted(grads)} differ")

    # The saved files alone must reproduce the numbers: reload base + adapter the way PEFT users do.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = PeftModel.from_pretrained(load_base(hf_dir), adapter_dir).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=input_ids, attention_mask=attention_mask).logits
    if not torch.equal(logits, fwd.logits.detach()):
        raise RuntimeError(f"{name}: PeftModel.from_pretrained gives other logits")

    tensors[f"{name}/loss"] = fwd.loss.detach().reshape(1)
    tensors[f"{name}/logits"] = fwd.logits.detach()
    for key, g in grads.items():
        tensors[f"{name}/grad/{key}"] = g
    summary["adapters"][name] = {
        "dir": name,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "use_rslora": config.use_rslora,
        "scale": config.lora_alpha / (config.r**0.5 if config.use_rslora else config.r),
        "modules_to_save": adapter_config.get("modules_to_save"),
        "loss": fwd.loss.item(),
        "saved_keys": {k: list(v.shape) for k, v in saved.items()},
    }


# ---------------------------------------------------------------------------------------------------------------


def make_family(name: str, family: Family, out: Path, versions: dict):
    from safetensors import safe_open
    from safetensors.torch import save_file

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    hf_dir = out / "hf"
    base = build_base_model(family)
    base.save_pretrained(hf_dir, safe_serialization=True)
    write_tokenizer(hf_dir, base.config.vocab_size)
    # Everything below reads the saved files, not the live model.
    base = load_base(hf_dir)

    batch = make_batch(family.seed, base.config.vocab_size)
    input_ids, attention_mask, labels = batch
    (out / "batch.json").write_text(
        json.dumps({"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(),
                    "labels": labels.tolist()}) + "\n"
    )
    with torch.no_grad():
        base_out = base(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    tensors = {"base/logits": base_out.logits, "base/loss": base_out.loss.reshape(1)}
    continuations = [greedy(base, row[:GREEDY_PROMPT]) for row in input_ids]

    window = base.config.to_dict().get("sliding_window")
    if family.model_type in ("mistral", "gemma3_text") and window is not None:
        # The window must matter: a copy without it agrees on the first `window` positions, and only there.
        # (Gemma 3's local layers keep their RoPE base; their window becomes wider than the batch.)
        full = load_base(hf_dir)
        full.config.sliding_window = None if family.model_type == "mistral" else T
        with torch.no_grad():
            wide = full(input_ids=input_ids, attention_mask=attention_mask).logits
        same = (wide - base_out.logits).abs().amax(dim=(0, 2)) < 1e-6
        if not same[:window].all() or same[window:].any():
            raise RuntimeError(f"{name}: the window does not change exactly the positions past it: {same.tolist()}")

    converter, gguf_keys, gguf_tensors = convert_to_gguf(hf_dir, out / "model.gguf", family)
    with safe_open(hf_dir / "model.safetensors", "pt") as f:
        hf_keys = {k: list(f.get_slice(k).get_shape()) for k in sorted(f.keys())}

    summary = {
        "produced_by": "scripts/make_family_fixtures.py",
        "family": name,
        "what": family.what,
        "versions": versions,
        "dtype": "float32",
        "attn_implementation": "eager",
        "config": {k: v for k, v in base.config.to_dict().items() if k not in ("transformers_version", "dtype")},
        "hf_keys": hf_keys,
        "gguf": {
            "converter": f"llama.cpp 0.3.36 {converter} (convert_hf_to_gguf.py --outtype f32)",
            "tokenizer_pre_note": "get_vocab_base_pre returns 'gpt-2' (the tiny tokenizer's split; not in "
            "the converter's hash table)",
            "added_keys": {k: {"value": v, "why": why} for k, (v, why) in family.gguf_keys.items()},
            "keys": gguf_keys,
            "tensors": gguf_tensors,
        },
        "batch": {
            "shape": [B, T],
            "ignored_label_positions": "row 0: first 3, row 1: first 5 (-100)",
            "loss": "HF ForCausalLMLoss: logits[:, :-1] vs labels[:, 1:], mean over targets != -100",
        },
        "base": {"loss": base_out.loss.item()},
        "greedy": {
            "continuations": continuations,
            "how": f"generate(do_sample=False, max_new_tokens={GREEDY_NEW}) on input_ids[r, :{GREEDY_PROMPT}] of "
            "each row r, no EOS; equal to argmax over full forwards; min_top2_gap: the smallest gap between the "
            "best and second-best logit on the way",
        },
        "adapters": {},
    }
    run_adapter(family, out, "adapter", {"use_rslora": False}, False, batch, tensors, summary)
    run_adapter(
        family, out, "adapter_rslora_embed",
        {"use_rslora": True, "modules_to_save": ["embed_tokens", "lm_head"]}, True, batch, tensors, summary,
    )

    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}
    save_file(tensors, out / "expected.safetensors", metadata={"produced_by": "scripts/make_family_fixtures.py"})
    (out / "expected.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    write_readme(out, name, family, summary)

    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    losses = ", ".join(f"{a} {s['loss']:.6f}" for a, s in summary["adapters"].items())
    tokens = [c["tokens"] for c in continuations]
    gap = min(c["min_top2_gap"] for c in continuations)
    print(f"{name}: {total} bytes; base loss {summary['base']['loss']:.6f}, {losses}; greedy {tokens} "
          f"(top-2 gap >= {gap:.3f})", file=sys.stderr)


def write_readme(out: Path, name: str, family: Family, summary: dict):
    v = summary["versions"]
    added = "".join(f"\n  `{k}` = {a['value']} is added: {a['why']}." for k, a in summary["gguf"]["added_keys"].items())
    cfg = summary["config"]
    (out / "README.md").write_text(
        f"""# families/{name} — transformers + PEFT reference numbers for loft's tests

Generated, do not edit: `bench/peers/venv.sh && .cache/venv-peft/bin/python scripts/make_family_fixtures.py {name}`
(torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}; float32, eager attention, 1 thread, fixed
seeds). {family.what}.

- `hf/` — random `{cfg['architectures'][0]}` as `save_pretrained` writes it (vocab {cfg['vocab_size']}, hidden
  {cfg['hidden_size']}, intermediate {cfg['intermediate_size']}, {cfg['num_hidden_layers']} layers,
  {cfg['num_attention_heads']} heads, {cfg['num_key_value_heads']} kv heads, head_dim {cfg.get('head_dim')},
  tie_word_embeddings {cfg['tie_word_embeddings']}, sliding_window {cfg.get('sliding_window')}), with a 64-token
  byte-level BPE tokenizer (GPT-2's split, lowercase text).
- `model.gguf` — the same weights by {summary['gguf']['converter']}; `get_vocab_base_pre` replaced to return
  'gpt-2' for the tiny tokenizer.{added}
- `adapter/` — PEFT LoRA r=4, alpha=8 on q,k,v,o,gate,up,down; lora_B = 0.1·randn.
- `adapter_rslora_embed/` — same with use_rslora and modules_to_save = [embed_tokens, lm_head], perturbed.
  `base_model_name_or_path` is `../hf`, `target_modules` sorted.
- `batch.json` — input_ids [2, 12], attention_mask (ones), labels (-100 on the first 3 / 5 positions).
- `expected.safetensors` — f32: `base/logits`, `base/loss`, and per adapter `<dir>/loss`, `<dir>/logits`,
  `<dir>/grad/<key as saved in adapter_model.safetensors>` (gradient of HF's mean causal-LM loss).
- `expected.json` — losses, the greedy continuations of input_ids[r, :{GREEDY_PROMPT}] ({GREEDY_NEW} tokens each), the
  config, every saved key with its shape, the GGUF's keys and tensors.

The script checks itself: each adapter reloaded with `PeftModel.from_pretrained` gives the same logits, and
`generate`'s greedy tokens equal argmax over full forwards.
"""
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", help=f"default: all of {', '.join(FAMILIES)}")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"error: unknown families {unknown}; known: {', '.join(FAMILIES)}")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import peft
    import safetensors
    import transformers
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "python": sys.version.split()[0],
    }
    for name in args.families or FAMILIES:
        make_family(name, FAMILIES[name], args.out / name, versions)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
