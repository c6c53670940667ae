#!/usr/bin/env python3
"""Builds crates/loft/tests/fixtures/bnb_tiny: a tiny random Llama in bfloat16 and the same model as a
bitsandbytes 4-bit checkpoint (NF4, double quantization), written by transformers + bitsandbytes themselves the
way the `*-bnb-4bit` hub repositories are, plus bitsandbytes' own dequantized weights and the logits and loss
of the dequantized model, so loft's NF4 reader and its quantize-at-load are pinned against bitsandbytes.

    python3 -m venv .cache/venv-bnb
    echo "$(cd .cache/venv-peft/lib/python3*/site-packages && pwd)" > .cache/venv-bnb/lib/python3*/site-packages/peft.pth
    .cache/venv-bnb/bin/pip install bitsandbytes      # torch and transformers come from venv-peft via the .pth
    .cache/venv-bnb/bin/python scripts/make_bnb_fixture.py

Deterministic (fixed seeds, one thread, bitsandbytes' CPU kernels). Writes:
  base/                   config.json + model.safetensors, bfloat16 (save_pretrained)
  bnb/                    base loaded with BitsAndBytesConfig(load_in_4bit, nf4, double quant) and saved again:
                          `*.weight` uint8 [n/2, 1] + `.absmax` (uint8) `.quant_map` `.nested_absmax`
                          `.nested_quant_map` `.quant_state.bitsandbytes__nf4` (JSON bytes); config.json with
                          `quantization_config`; embed_tokens, lm_head and norms stay bfloat16
  expected.safetensors    dequantized/<name> = bitsandbytes.functional.dequantize_4bit of two matrices (bf16,
                          as bitsandbytes returns them); quant4/<name>/{packed (u8), absmax (f32)} =
                          quantize_4bit(compress_statistics=False) of the base's bf16 matrix; tokens (as f32);
                          logits [T, V] and loss [1] of the model whose linear weights are the dequantized ones,
                          in float32 (eager attention)
  expected.json           versions, shapes, losses, the quant_state of every quantized matrix
  README.md
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "crates/loft/tests/fixtures/bnb_tiny"
SEED = 4321
T = 16
VOCAB = 128
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PINNED = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]


def build_base():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,  # down_proj rows of 96 values: bitsandbytes' 64-value blocks straddle rows
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name == "model.embed_tokens.weight":
                p.copy_(0.25 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return model.to(torch.bfloat16).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import bitsandbytes
    import bitsandbytes.functional as bnbf
    import safetensors
    import transformers
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    base = build_base()
    base.save_pretrained(out / "base", safe_serialization=True)

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    qmodel = LlamaForCausalLM.from_pretrained(out / "base", quantization_config=quant, device_map="cpu")
    qmodel.save_pretrained(out / "bnb", safe_serialization=True)
    for d in ("base", "bnb"):
        (out / d / "generation_config.json").unlink(missing_ok=True)

    # Dequantize every 4-bit matrix with bitsandbytes and rebuild the model in float32 around those weights.
    ref = LlamaForCausalLM.from_pretrained(out / "base", dtype=torch.float32, attn_implementation="eager").eval()
    ref_params = dict(ref.named_parameters())
    dequantized, quant_states = {}, {}
    for name, module in qmodel.named_modules():
        if type(module).__name__ != "Linear4bit":
            continue
        w = module.weight
        deq = bnbf.dequantize_4bit(w.data, w.quant_state)
        assert deq.dtype == torch.bfloat16, deq.dtype
        key = f"{name}.weight"
        dequantized[key] = deq.float()
        with torch.no_grad():
            ref_params[key].copy_(deq.float())
        qs = w.quant_state.as_dict()
        quant_states[key] = {k: v for k, v in qs.items() if not isinstance(v, torch.Tensor)}
    assert len(dequantized) == 2 * len(LINEAR), sorted(dequantized)

    # The checkpoint as written must decode to the same numbers (the loader path, not the live objects).
    with safe_open(out / "bnb" / "model.safetensors", "pt") as f:
        keys = sorted(f.keys())
        saved = {k: f.get_tensor(k) for k in keys}
    for key, deq in dequantized.items():
        parts = {k[len(key) + 1 :]: v for k, v in saved.items() if k.startswith(key + ".")}
        qs = bnbf.QuantState.from_dict({k: v for k, v in parts.items()}, device=torch.device("cpu"))
        again = bnbf.dequantize_4bit(saved[key], qs).float()
        if not torch.equal(again, deq):
            raise RuntimeError(f"{key}: the saved checkpoint decodes to other values")

    # quantize_4bit without double quantization on the base's bf16 values, for loft's quantize-at-load.
    tensors = {}
    with safe_open(out / "base" / "model.safetensors", "pt") as f:
        for key in PINNED:
            src = f.get_tensor(key)
            packed, st = bnbf.quantize_4bit(src, blocksize=64, compress_statistics=False, quant_type="nf4")
            tensors[f"quant4/{key}/packed"] = packed.reshape(-1)
            tensors[f"quant4/{key}/absmax"] = st.absmax
            tensors[f"dequantized/{key}"] = dequantized[key].to(torch.bfloat16)  # exact: bnb returned bf16

    g = torch.Generator().manual_seed(SEED + 1)
    tokens = torch.randint(0, VOCAB, (1, T), generator=g)
    with torch.no_grad():
        ref_out = ref(input_ids=tokens, labels=tokens)
        q_out = qmodel(input_ids=tokens, labels=tokens)
    tensors["tokens"] = tokens.reshape(-1).to(torch.float32)
    tensors["logits"] = ref_out.logits[0].float()
    tensors["loss"] = ref_out.loss.reshape(1).float()
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, out / "expected.safetensors", metadata={"produced_by": "scripts/make_bnb_fixture.py"})

    summary = {
        "produced_by": "scripts/make_bnb_fixture.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "bitsandbytes": bitsandbytes.__version__,
            "safetensors": safetensors.__version__,
            "python": sys.version.split()[0],
        },
        "quantization_config": json.loads((out / "bnb" / "config.json").read_text())["quantization_config"],
        "tokens": tokens[0].tolist(),
        "loss_dequantized_f32": ref_out.loss.item(),
        "loss_bnb_bf16_compute": q_out.loss.item(),
        "bnb_saved_keys": {k: [str(saved[k].dtype).replace("torch.", ""), list(saved[k].shape)] for k in keys},
        "quant_states": quant_states,
    }
    (out / "expected.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_readme(out, summary)

    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    for f in sorted(out.rglob("*")):
        if f.is_file():
            print(f"{f.stat().st_size:>9}  {f.relative_to(out)}", file=sys.stderr)
    print(f"{total:>9}  total in {out}", file=sys.stderr)
    print(f"loss: dequantized f32 {ref_out.loss.item():.6f}, bnb bf16 compute {q_out.loss.item():.6f}", file=sys.stderr)


def write_readme(out, s):
    v = s["versions"]
    (out / "README.md").write_text(
        f"""# bnb_tiny — bitsandbytes NF4 reference for loft's tests

Generated, do not edit: see `scripts/make_bnb_fixture.py` (torch {v['torch']}, transformers {v['transformers']},
bitsandbytes {v['bitsandbytes']}, safetensors {v['safetensors']}, Python {v['python']}; CPU kernels, fixed seeds).

- `base/` — random `LlamaForCausalLM` in bfloat16 (vocab {VOCAB}, hidden 64, intermediate 96, 2 layers, 4 heads,
  2 kv heads, head_dim 16, untied lm_head).
- `bnb/` — `base/` loaded with `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
  bnb_4bit_use_double_quant=True)` and saved with `save_pretrained`: the layout of the `*-bnb-4bit` hub
  repositories (packed uint8 weights, absmax, quant_map, nested_absmax, nested_quant_map,
  quant_state.bitsandbytes__nf4).
- `expected.safetensors` — `dequantized/<name>` (bitsandbytes' `dequantize_4bit`, bfloat16 as it returns it) for
  {', '.join(PINNED)}; `quant4/<name>/packed|absmax` (`quantize_4bit` of `base/`'s values, no double
  quantization; packed as u8); f32 `tokens` [{T}]; `logits` [{T}, {VOCAB}] and `loss` of the model with every 4-bit matrix
  replaced by its dequantized values, in float32 (loss {s['loss_dequantized_f32']:.6f}; bitsandbytes' own bf16
  forward gives {s['loss_bnb_bf16_compute']:.6f}).
- `expected.json` — versions, the saved keys with dtypes and shapes, every matrix's quant_state.
"""
    )


if __name__ == "__main__":
    main()
