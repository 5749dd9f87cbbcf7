#!/usr/bin/env bash
# GPU benchmark set (issue 15). NOT RUN YET: no GPU was lent to the session that wrote it, so it has
# never been executed on a GPU and its figures are unknown; run it once on the GPU box and put the
# printed lines in the issue note.
#
#   bash benchmarks/gpu.sh            # from the repository root, .venv set up (make test / make demo)
#
# 1. Evaluation at HMDB51's test-split size: 10 classes x 129 videos (1,290 ~ 1,292 test videos),
#    10,000 5-way 1-shot episodes (77.5 uses per video), ViT-B-16 random weights at 224 px, M=2, bf16
#    autocast, batched (64 episodes per pass) + cached, against 200 episodes one at a time uncached.
#    The cache is built in memory inside the timed run (the vision-prefix artifact is another part of
#    issue 15); target: 10,000 episodes in < 30 s on one H200 including the cache.
# 2. Training step and peak memory: benchmarks/model.py (forward + backward of one episode, CUDA max
#    allocated per row).
# Each step has its own time limit so the whole set stays under 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== evaluation: 10,000 HMDB51-sized episodes, batched + cached vs one at a time uncached"
start=$(date +%s)
timeout 300 "$PY" benchmarks/evaluate.py --device cuda --amp --clip ViT-B-16 --image-size 224 \
    --classes 10 --videos-per-class 129 --episodes 10000 --uncached-episodes 200 --episodes-per-batch 64
echo "evaluation benchmark wall time (model build and set-up included): $(( $(date +%s) - start )) s"

echo "== training step and peak memory (one episode, ViT-B-16, bf16 autocast)"
timeout 240 "$PY" benchmarks/model.py --clip ViT-B-16 --device cuda --amp --repeats 5
