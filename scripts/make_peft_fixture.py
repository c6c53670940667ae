#!/usr/bin/env python3
"""Builds crates/loft/tests/fixtures/peft_tiny: a tiny random Llama, two PEFT LoRA adapters, a batch,
and PyTorch's loss, logits and gradients for them, so loft's hand-written forward/backward and its
PEFT reader are pinned against PyTorch + PEFT.

    bench/peers/venv.sh && .cache/venv-peft/bin/python scripts/make_peft_fixture.py

Deterministic (fixed seeds, float32, eager attention, one thread). Writes:
  base/                       config.json + model.safetensors (save_pretrained)
  adapter/                    LoRA r4 alpha8 on q,k,v,o,gate,up,down (adapter_config.json + adapter_model.safetensors)
  adapter_rslora_embed/       same with use_rslora and modules_to_save=[embed_tokens, lm_head]
  batch.json                  input_ids / attention_mask / labels [2, 12]
  expected.safetensors        f32: base/logits, <adapter>/{loss, logits, grad/<PEFT key>}
  expected.json               the same in words: losses, key names, shapes, PEFT's tied-embedding behaviour
  README.md
"""

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates/loft/tests/fixtures/peft_tiny"

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SEED = 1234
B, T = 2, 12


def build_base_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        hidden_act="silu",
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    # Re-initialise with larger scales than HF's 0.02 so attention is far from uniform, logits are
    # spread and every path (RoPE, GQA, norms) moves the numbers; norm weights are not all ones.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name == "model.embed_tokens.weight":
                p.copy_(0.25 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                raise RuntimeError(f"unexpected parameter {name} {tuple(p.shape)}")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "head not tied"
    model.eval()  # no dropout anywhere (there is none in Llama; this is belt and braces)
    return model


def make_batch():
    g = torch.Generator().manual_seed(SEED + 1)
    input_ids = torch.randint(0, 64, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    labels = input_ids.clone()
    labels[0, :3] = -100
    labels[1, :5] = -100
    return input_ids, attention_mask, labels


def peft_key(param_name: str, adapter_name: str = "default") -> str:
    """The key PEFT's save_pretrained writes for a trainable parameter (it drops the adapter name)."""
    # lora:            ...q_proj.lora_A.default.weight           -> ...q_proj.lora_A.weight
    # modules_to_save: ...embed_tokens.modules_to_save.default.weight -> ...embed_tokens.weight
    name = param_name.replace(f".modules_to_save.{adapter_name}.", ".")
    return name.replace(f".{adapter_name}.", ".")


def run_adapter(base_dir, out, name, lora_kwargs, perturb_saved_modules, tensors, summary):
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
        **lora_kwargs,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = get_peft_model(model, config)
    peft_warnings = [str(w.message) for w in caught if "tie" in str(w.message).lower()]

    torch.manual_seed(SEED + 2 + len(summary["adapters"]))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.copy_(0.1 * torch.randn_like(p))  # PEFT initialises B to zero: make every gradient non-zero
            elif perturb_saved_modules and "modules_to_save" in pname:
                p.add_(0.05 * torch.randn_like(p))  # so the adapter's copy, not the base's, must be used
    model.eval()

    adapter_dir = out / name
    # adapter_config's base_model_name_or_path: relative to the adapter, not this machine's absolute path
    model.peft_config["default"].base_model_name_or_path = "../base"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save_pretrained(adapter_dir, safe_serialization=True)
    save_warnings = [str(w.message) for w in caught]
    (adapter_dir / "README.md").unlink()  # PEFT's model-card template, with this machine's path in it
    # PEFT writes target_modules from a set (order varies run to run): sort it so the file is reproducible
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")

    input_ids, attention_mask, labels = make_batch()
    out_fwd = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    out_fwd.loss.backward()

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        saved_keys = sorted(f.keys())
        saved = {k: f.get_tensor(k) for k in saved_keys}

    grads = {}
    for pname, p in trainable.items():
        key = peft_key(pname)
        if p.grad is None:
            raise RuntimeError(f"{name}: no gradient for {pname}")
        if key in grads:
            raise RuntimeError(f"{name}: two parameters map to {key}")
        grads[key] = p.grad.detach().clone()
    missing = sorted(set(saved_keys) - set(grads))
    extra = sorted(set(grads) - set(saved_keys))
    if missing or extra:
        raise RuntimeError(f"{name}: saved keys and trainable parameters differ: missing={missing} extra={extra}")
    for key, p in ((peft_key(n), p) for n, p in trainable.items()):
        if not torch.equal(saved[key], p.detach()):
            raise RuntimeError(f"{name}: saved {key} differs from the live parameter")
        # embedding rows of tokens absent from the batch have zero gradient; everything else must not
        if "embed_tokens" not in key and not (grads[key] != 0).all():
            raise RuntimeError(f"{name}: {key} has zero gradient entries")

    # The saved files alone must reproduce the numbers: reload base + adapter the way PEFT users do.
    from peft import PeftModel

    fresh = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = PeftModel.from_pretrained(fresh, adapter_dir).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=input_ids, attention_mask=attention_mask).logits
    if not torch.equal(logits, out_fwd.logits.detach()):
        diff = (logits - out_fwd.logits).abs().max().item()
        raise RuntimeError(f"{name}: PeftModel.from_pretrained gives other logits (max |diff| {diff})")

    tensors[f"{name}/loss"] = out_fwd.loss.detach().reshape(1)
    tensors[f"{name}/logits"] = out_fwd.logits.detach()
    for key, g in grads.items():
        tensors[f"{name}/grad/{key}"] = g

    n_targets = int((labels[:, 1:] != -100).sum())
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    entry = {
        "dir": name,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "use_rslora": config.use_rslora,
        "scale": config.lora_alpha / (config.r**0.5 if config.use_rslora else config.r),
        "modules_to_save_requested": lora_kwargs.get("modules_to_save"),
        "adapter_config_modules_to_save": adapter_config.get("modules_to_save"),
        "loss": out_fwd.loss.item(),
        "loss_targets": n_targets,
        "saved_keys": {k: list(saved[k].shape) for k in saved_keys},
        "peft_warnings_on_get_peft_model": peft_warnings,
        "peft_warnings_on_save": save_warnings,
    }
    if perturb_saved_modules:
        emb = saved.get("base_model.model.model.embed_tokens.weight")
        head = saved.get("base_model.model.lm_head.weight")
        entry["tied_embedding_behaviour"] = describe_tied(model, saved_keys, emb, head, config)
    summary["adapters"][name] = entry
    return model


def describe_tied(model, saved_keys, emb, head, config):
    emb_mod = model.base_model.model.model.embed_tokens
    head_mod = model.base_model.model.lm_head
    live_emb = emb_mod.modules_to_save["default"].weight
    live_head = head_mod.modules_to_save["default"].weight
    shared = live_emb.data_ptr() == live_head.data_ptr()
    return {
        "ensure_weight_tying": getattr(config, "ensure_weight_tying", None),
        "wrappers": [type(emb_mod).__name__, type(head_mod).__name__],
        "trainable_copies_share_storage": shared,
        "embed_saved_as": [k for k in saved_keys if "embed_tokens" in k],
        "lm_head_saved_as": [k for k in saved_keys if "lm_head" in k],
        "saved_embed_equals_saved_lm_head": bool(emb is not None and head is not None and torch.equal(emb, head)),
        "note": (
            "With PEFT's default ensure_weight_tying=False, modules_to_save=[embed_tokens, lm_head] on a tied "
            "model makes two independent full copies of the tied matrix (PEFT warns): the input embedding reads "
            "'base_model.model.model.embed_tokens.weight', the head reads 'base_model.model.lm_head.weight', and "
            "each gets its own gradient (no sum). Here both copies were perturbed differently before saving, so "
            "the logits only match when each is used in its own place."
            if not shared
            else "The two trainable copies share one storage (tied)."
        ),
    }


def tied_variant_keys(base_dir):
    """What PEFT does with ensure_weight_tying=True (recorded for reference only; no tensors kept)."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGET_MODULES, use_rslora=True,
        modules_to_save=["embed_tokens", "lm_head"], ensure_weight_tying=True, task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = get_peft_model(model, config)
            with tempfile.TemporaryDirectory() as d:
                model.save_pretrained(d, safe_serialization=True)
                with safe_open(Path(d) / "adapter_model.safetensors", "pt") as f:
                    keys = sorted(k for k in f.keys() if "lora_" not in k)
                    saved = {k: f.get_tensor(k) for k in keys}
                cfg = json.loads((Path(d) / "adapter_config.json").read_text())
        emb = model.base_model.model.model.embed_tokens
        head = model.base_model.model.lm_head
        trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)
        return {
            "non_lora_saved_keys": keys,
            "non_lora_trainable_parameters": trainable,
            "adapter_config_modules_to_save": cfg.get("modules_to_save"),
            "saved_embed_equals_saved_lm_head": torch.equal(
                saved["base_model.model.model.embed_tokens.weight"], saved["base_model.model.lm_head.weight"]
            ),
            "wrappers": [type(emb).__name__, type(head).__name__],
            "warnings": [str(w.message) for w in caught if "tie" in str(w.message).lower()],
        }
    except Exception as e:  # record, don't fail: this variant is informational
        return {"error": f"{type(e).__name__}: {e}"}


def check_by_finite_differences(out, tensors, probes=3):
    """Central differences in float64 on a few entries of every gradient tensor kind, through the saved files.

    HF's LlamaRMSNorm computes in float32 even for float64 inputs, so eps is large (1e-3) and agreement is ~1e-3.
    """
    import warnings

    from peft import PeftModel
    from transformers import LlamaForCausalLM

    input_ids, _, labels = make_batch()
    worst = 0.0
    for name in ("adapter", "adapter_rslora_embed"):
        base = LlamaForCausalLM.from_pretrained(out / "base", dtype=torch.float64, attn_implementation="eager")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(base, out / name).double().eval()
        params = {peft_key(n): p for n, p in model.named_parameters() if "lora_" in n or "modules_to_save" in n}

        def loss():
            logits = model(input_ids=input_ids).logits[:, :-1]
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))

        prefix = f"{name}/grad/"
        keys = [k for k in tensors if k.startswith(prefix)]
        picked = [k for k in keys if "layers.1.self_attn.k_proj" in k or "layers.0.mlp.down_proj" in k]
        picked += [k for k in keys if "embed_tokens" in k or "lm_head" in k]
        for key in picked:
            grad = tensors[key]
            p = params[key[len(prefix) :]]
            for flat in torch.topk(grad.abs().flatten(), probes).indices.tolist():
                idx = tuple(torch.unravel_index(torch.tensor(flat), grad.shape))
                eps = 1e-3
                with torch.no_grad():
                    p[idx] += eps
                    up = loss().item()
                    p[idx] -= 2 * eps
                    down = loss().item()
                    p[idx] += eps
                fd = (up - down) / (2 * eps)
                rel = abs(fd - grad[idx].item()) / max(abs(fd), 1e-3)
                worst = max(worst, rel)
                if rel > 1e-2:
                    raise RuntimeError(f"{key}{list(idx)}: autograd {grad[idx].item()} vs finite difference {fd}")
    print(f"finite differences agree (worst relative difference {worst:.1e})", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import peft
    import safetensors
    import transformers
    from safetensors.torch import save_file

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    base = build_base_model()
    base_dir = out / "base"
    base.save_pretrained(base_dir, safe_serialization=True)

    input_ids, attention_mask, labels = make_batch()
    (out / "batch.json").write_text(
        json.dumps(
            {
                "input_ids": input_ids.tolist(),
                "attention_mask": attention_mask.tolist(),
                "labels": labels.tolist(),
            }
        )
        + "\n"
    )

    tensors = {}
    with torch.no_grad():
        base_out = base(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    tensors["base/logits"] = base_out.logits
    tensors["base/loss"] = base_out.loss.reshape(1)

    from safetensors import safe_open

    with safe_open(base_dir / "model.safetensors", "pt") as f:
        base_keys = {k: list(f.get_slice(k).get_shape()) for k in sorted(f.keys())}

    summary = {
        "produced_by": "scripts/make_peft_fixture.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "safetensors": safetensors.__version__,
            "python": sys.version.split()[0],
        },
        "dtype": "float32",
        "attn_implementation": "eager",
        "base": {
            "dir": "base",
            "loss": base_out.loss.item(),
            "saved_keys": base_keys,
            "tied_note": "tie_word_embeddings=true: model.safetensors holds model.embed_tokens.weight only"
            if "lm_head.weight" not in base_keys
            else "lm_head.weight is stored too",
        },
        "batch": {
            "shape": [B, T],
            "ignored_label_positions": "row 0: first 3, row 1: first 5 (-100)",
            "loss": "HF ForCausalLMLoss: logits[:, :-1] vs labels[:, 1:], mean over targets != -100",
        },
        "expected_safetensors": {
            "base/logits": [B, T, 64],
            "base/loss": [1],
            "<adapter>/loss": [1],
            "<adapter>/logits": [B, T, 64],
            "<adapter>/grad/<key as in adapter_model.safetensors>": "same shape as the saved tensor",
        },
        "adapters": {},
    }

    run_adapter(base_dir, out, "adapter", {"use_rslora": False}, False, tensors, summary)
    run_adapter(
        base_dir,
        out,
        "adapter_rslora_embed",
        {"use_rslora": True, "modules_to_save": ["embed_tokens", "lm_head"]},
        True,
        tensors,
        summary,
    )
    summary["peft_with_ensure_weight_tying_true"] = tied_variant_keys(base_dir)

    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}
    save_file(tensors, out / "expected.safetensors", metadata={"produced_by": "scripts/make_peft_fixture.py"})
    (out / "expected.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_readme(out, summary)
    check_by_finite_differences(out, tensors)

    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size:>9}  {f.relative_to(out)}", file=sys.stderr)
    print(f"{total:>9}  total in {out}", file=sys.stderr)
    for name, a in summary["adapters"].items():
        print(f"{name}: loss {a['loss']:.6f}", file=sys.stderr)


def write_readme(out, summary):
    v = summary["versions"]
    a = summary["adapters"]
    (out / "README.md").write_text(
        f"""# peft_tiny — PyTorch + PEFT reference numbers for loft's tests

Generated, do not edit: `bench/peers/venv.sh && .cache/venv-peft/bin/python scripts/make_peft_fixture.py`
(torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, safetensors {v['safetensors']},
Python {v['python']}; float32, eager attention, 1 thread, fixed seeds).

- `base/` — random `LlamaForCausalLM` (vocab 64, hidden 32, intermediate 48, 2 layers, 4 heads, 2 kv heads,
  head_dim 8, rope_theta 10000, rms_norm_eps 1e-5, tied embeddings; norm weights 1 + 0.1·randn).
- `adapter/` — PEFT LoRA r=4, alpha=8 (scale {a['adapter']['scale']}), q,k,v,o,gate,up,down; lora_B = 0.1·randn.
- `adapter_rslora_embed/` — same with use_rslora (scale {a['adapter_rslora_embed']['scale']}) and
  modules_to_save = [embed_tokens, lm_head]; PEFT's default keeps two untied copies
  (`base_model.model.model.embed_tokens.weight`, `base_model.model.lm_head.weight`), perturbed differently here.
  Files as PEFT's `save_pretrained` writes them, less its model-card README.md, with `target_modules` sorted
  and `base_model_name_or_path` set to `../base`.
- `batch.json` — input_ids [2, 12], attention_mask (ones), labels (-100 on the first 3 / 5 positions).
- `expected.safetensors` — f32: `base/logits`, `base/loss`, and per adapter `<dir>/loss`, `<dir>/logits`,
  `<dir>/grad/<key as saved in adapter_model.safetensors>` (gradient of HF's mean causal-LM loss).
- `expected.json` — losses, every saved key with its shape, PEFT's warnings and tied-embedding behaviour.

The script checks itself: each adapter reloaded with `PeftModel.from_pretrained` gives the same logits, and
float64 central differences agree with the gradients (to ~1e-3: HF's RMSNorm computes in float32 even in float64).
"""
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
