#!/usr/bin/env bash
# Creates .cache/venv-peft (git-ignored) with the pinned torch + transformers + PEFT of
# bench/peers/requirements.txt, for the peer benchmark and the PEFT fixture generator.
# Idempotent: does nothing when the venv exists and imports the pinned versions.
# Usage: bench/peers/venv.sh            (PYTHON=python3.11 bench/peers/venv.sh to pick the interpreter)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="$(cd "$here/../.." && pwd)/.cache/venv-peft"
requirements="$here/requirements.txt"
python="${PYTHON:-python3}"

log() { echo "venv-peft: $*" >&2; }

# The pins the venv must import, e.g. "torch==2.15.0".
pin() { grep -E "^$1==" "$requirements" | cut -d= -f3; }
check='
import sys, torch, transformers, peft, safetensors, numpy
want = dict(a.split("=") for a in sys.argv[1:])
have = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
        "peft": peft.__version__, "safetensors": safetensors.__version__, "numpy": numpy.__version__}
bad = [f"{k} {have[k]} (want {v})" for k, v in want.items() if have[k] != v]
if bad:
    sys.exit("wrong versions: " + ", ".join(bad))
float(torch.randn(2) @ torch.randn(2))
'
versions=(torch="$(pin torch)" transformers="$(pin transformers)" peft="$(pin peft)"
          safetensors="$(pin safetensors)" numpy="$(pin numpy)")

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -W ignore -c "$check" "${versions[@]}" 2>/dev/null; then
    # Pins added after the venv was built are installed on top (a small wheel, not the whole venv again).
    if ! "$venv/bin/python" -c "import sentencepiece" 2>/dev/null; then
        log "adding sentencepiece==$(pin sentencepiece) (llama.cpp's converter, for scripts/make_family_fixtures.py)"
        "$venv/bin/python" -m pip install --quiet --no-deps --only-binary=:all: "sentencepiece==$(pin sentencepiece)" >&2
    fi
    if ! "$venv/bin/python" -c "import gguf" 2>/dev/null; then
        log "adding gguf==$(pin gguf) (transformers' GGUF reader, for scripts/make_gemma3_reference.py)"
        "$venv/bin/python" -m pip install --quiet --no-deps --only-binary=:all: "gguf==$(pin gguf)" >&2
    fi
    log "$venv is ready (${versions[*]})"
    exit 0
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { log "error: torch $(pin torch) needs Python >= 3.11; set PYTHON=..."; exit 1; }

log "creating $venv with $("$python" --version)"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
# --no-deps: the pins are the whole closure; letting pip resolve torch's metadata would add
# triton, cuda-bindings and the rest of the CUDA toolkit (GPU-only, another ~1 GB).
log "installing $(grep -cE '^[a-z]' "$requirements") pinned packages (~2.5 GB download, ~4 GB on disk)"
"$venv/bin/python" -m pip install --quiet --no-deps --only-binary=:all: -r "$requirements" >&2

log "checking the install"
"$venv/bin/python" -W ignore -c "$check" "${versions[@]}"
log "ready: $venv ($(du -sh "$venv" | cut -f1)); ${versions[*]}"
