#!/usr/bin/env python3
"""PyTorch + PEFT peer of `loft bench train`: times the same LoRA training step on the CPU, or on a CUDA GPU.

    bench/peers/venv.sh && .cache/venv-peft/bin/python bench/peers/peft_train.py --batch 4 --seq 256

Model (--shape smollm2-135m, the default): the SmolLM2-135M shape (vocab 49152, hidden 576, intermediate 1536, 30 layers, 9 heads, 3 kv heads,
head_dim 64, tied embeddings, rope_theta 100000) with random weights, f32. LoRA r16 alpha 32 dropout 0 on
q,k,v,o,gate,up,down; AdamW lr 1e-4 over the LoRA parameters. One step = forward, loss (labels = input_ids,
HF's shifted mean cross-entropy), backward, optimizer.step, zero_grad. --shape llama-1b: the Llama-3.2-1B shape
(vocab 128256, hidden 2048, intermediate 8192, 16 layers, 32 heads, 8 kv heads, tied), as `loft bench train
--shape llama-1b`. --device cuda runs it on the GPU (f32 with TF32 off, as loft's f32 kernels; --bf16 autocasts).

The last stdout line is JSON: {"tool", "torch", "peft", "batch", "seq", "tokens_per_second",
"peak_rss_bytes", "seconds_per_step", "threads", ...}. Progress goes to stderr.
"""

import argparse
import json
import resource
import sys
import time
import warnings

import torch

SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=1,
    eos_token_id=2,
    use_cache=False,
)
LLAMA_1B = dict(
    SMOLLM2_135M,
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    max_position_embeddings=131072,
    rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
)
SHAPES = {"smollm2-135m": SMOLLM2_135M, "llama-1b": LLAMA_1B}
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(msg):
    print(f"peft_train: {msg}", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (default 4)")
    ap.add_argument("--seq", type=int, default=256, help="tokens per sequence (default 256)")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank; alpha = 2 * rank (default 16)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (use_reentrant=False)")
    ap.add_argument("--bf16", action="store_true", help="torch.autocast(cpu, bfloat16) around forward + loss")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES), help="model shape (random weights)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the step runs")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 2:
        ap.error("need --steps >= 1, --warmup >= 0, --batch >= 1, --seq >= 2")

    if args.device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA GPU")
        torch.backends.cuda.matmul.allow_tf32 = False  # f32 as loft computes it
        torch.backends.cudnn.allow_tf32 = False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)

    t0 = time.perf_counter()
    config = LlamaConfig(**SHAPES[args.shape])
    config._attn_implementation = args.attn
    model = LlamaForCausalLM(config).to(torch.float32).to(args.device)  # random weights, no download
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # HF checkpoints only in training mode; there is no dropout (lora_dropout 0, Llama has none)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    log(
        f"built in {time.perf_counter() - t0:.1f}s: {n_total / 1e6:.1f}M params, {n_trainable / 1e6:.2f}M trainable; "
        f"torch {torch.__version__}, peft {peft.__version__}, transformers {transformers.__version__}, "
        f"{torch.get_num_threads()} threads, attn {args.attn}"
    )

    g = torch.Generator().manual_seed(args.seed + 1)
    input_ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=g).to(args.device)

    def step():
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # waits for the step on a GPU

    for i in range(args.warmup):
        t = time.perf_counter()
        loss = step()
        log(f"warmup {i + 1}/{args.warmup}: loss {loss:.4f}, {time.perf_counter() - t:.2f}s")

    times = []
    for i in range(args.steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
        log(f"step {i + 1}/{args.steps}: loss {loss:.4f}, {times[-1]:.2f}s")

    seconds_per_step = sum(times) / len(times)
    tokens = args.batch * args.seq
    result = {
        "tool": "pytorch+peft",
        "torch": torch.__version__,
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "batch": args.batch,
        "seq": args.seq,
        "rank": args.rank,
        "steps": args.steps,
        "warmup": args.warmup,
        "checkpointing": args.checkpointing,
        "bf16": args.bf16,
        "attn": args.attn,
        "tokens_per_second": tokens / seconds_per_step,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "seconds_per_step": seconds_per_step,
        "threads": torch.get_num_threads(),
        "final_loss": loss,
        "shape": args.shape,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "peak_device_bytes": torch.cuda.max_memory_allocated() if args.device == "cuda" else None,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
