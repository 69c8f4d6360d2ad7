#!/usr/bin/env bash
# The GPU figures, in one call on a lent GPU machine (the `device` tool runs it in the repo root;
# open_clip and its two pure-Python needs travel as wheels in .whl/, the machine has the rest;
# fill it once with `pip download --no-deps -d .whl open_clip_torch ftfy wcwidth`, ignored by git):
#   bench_train.py  open_clip ViT-B-32, random weights, bf16 autocast, batch 256: trainer vs bare loop
#   bench_embed_gpu.py  image embedding: the project's path vs bare loops and the model alone
set -uo pipefail
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 benchmarks/bench_train.py --device cuda --cases openclip-vit-b-32-bf16-256 openclip-vit-b-32-bf16-256-noaug \
  --steps "${TRAIN_STEPS:-50}" "${TRAIN_STEPS:-50}" --warmup 10 --repeats 2 \
  --products "${TRAIN_PRODUCTS:-3000}" --threads 8 --work /tmp/bench-train --out "$OUT/bench_train_gpu.json" 2>&1 \
  | grep -v "step/s" | tee "$OUT/bench_train.log"
python3 benchmarks/bench_embed_gpu.py --device cuda --images "${EMBED_IMAGES:-6000}" --batch 256 --work /tmp/bench-embed \
  --out "$OUT/bench_embed_gpu.json" 2>&1 | tee "$OUT/bench_embed.log"
