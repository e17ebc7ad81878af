#!/usr/bin/env bash
# The GPU half of the benchmark suite (`python -m bench --gpu`), on a machine with an NVIDIA GPU:
# ViT-B-32 feature extraction in fp16, training and evaluation against a 110k-entity KB at ViT-B-32 widths,
# and the vLLM description choice in bf16; the report goes to bench/REPORT-gpu.md (or $1).
#
# Needs torch with CUDA and the project's packages. Where they cannot be installed from an index (the
# device tool's machines have torch and transformers only), put wheels in .whl/ first, for the GPU's Python:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl open_clip_torch==3.3.0 faiss-cpu==1.15.1 duckdb==2.0.1 pyarrow==26.0.1 ftfy regex timm
# and vLLM 0.33 with its dependencies for the description section (several hundred MB: more than the device
# tool carries in one call, so that section needs a machine with an index or a prepared image).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mel-site .whl/*.whl
    export PYTHONPATH="/tmp/mel-site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: run python -m bench on CPU instead'"
exec python3 -m bench --gpu --report "${1:-bench/REPORT-gpu.md}"
