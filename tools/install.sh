#!/usr/bin/env bash
# Install unicl from this checkout into the active Python environment.
#
#   tools/install.sh            # the library and its CLI
#   tools/install.sh dev,kernels  # + test tools and the Triton kernels
#
# Used by both README commands and by CI. Idempotent: each step is skipped when
# what it installs is already there, so a re-run needs no network.
#  1. torch: `torch==2.13.0` only when no torch is importable, so a CUDA build the
#     user installed stays.
#  2. taming-transformers (the VQ-GAN modules) with --no-deps: its declared
#     requirements pull torchvision and a CUDA build of torch; unicl uses only its
#     torch-only modules.
#  3. unicl itself, editable, with the requested extras.
#  4. GPT-2's BPE table into unicl's cache, verified by sha256 (`unicl fetch-bpe`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
EXTRAS="${1:-}"
pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }
step() { printf '\n==> %s\n' "$*"; }

step "torch"
if "$PY" -c "import torch" 2>/dev/null; then
    echo "found torch $("$PY" -c 'import torch; print(torch.__version__)'), keeping it"
else
    pip_install "torch==2.13.0"
fi

step "taming-transformers (modules only, --no-deps)"
if "$PY" -c "import taming.modules.vqvae.quantize" 2>/dev/null; then
    echo "found taming-transformers"
else
    pip_install --no-deps "taming-transformers-rom1504==0.0.6"
fi

step "unicl${EXTRAS:+[$EXTRAS]}"
target="."
[ -n "$EXTRAS" ] && target=".[$EXTRAS]"
isolation=()
# Building in the current environment avoids fetching setuptools again on re-runs.
"$PY" -c "import setuptools, sys; sys.exit(int(tuple(map(int, setuptools.__version__.split('.')[:2])) < (64, 0)))" \
    2>/dev/null && isolation=(--no-build-isolation)
pip_install "${isolation[@]}" -e "$target"

step "GPT-2 BPE table"
"$PY" -m unicl fetch-bpe

echo
echo "unicl installed: $("$PY" -m unicl --version)"
