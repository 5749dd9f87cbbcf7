#!/usr/bin/env bash
# GPU benchmark set (issue 15). NOT RUN ON A GPU YET: no GPU was lent to the sessions that wrote it, so its
# GPU figures are unknown; only `--cpu-smoke` (the same commands at tiny sizes on CPU) has run. Run it once on
# the GPU box and put the printed lines in the issue note.
#
#   bash benchmarks/gpu.sh --fetch-wheels   # here, once (PyPI): wheels the GPU image lacks, into .whl/ (ignored)
#   bash benchmarks/gpu.sh                  # on the GPU machine; estimated 2-4 min (not measured), at most 9 by the timeouts
#   bash benchmarks/gpu.sh --cpu-smoke      # here: the same commands, tiny sizes, CPU (26 s on 2 busy cores)
#
# On the device tool: run(command="PYTHONUNBUFFERED=1 bash benchmarks/gpu.sh 2>&1 | tee $OUT/gpu.log",
# carry=[".whl"], timeout_s=600). Python: $PY, else .venv/bin/python, else python3 (the GPU image's, with
# torch 2.11 as last seen, while the project pins 2.14: the first lines print the versions); where open_clip or
# pydantic is missing, the wheels in .whl/ are installed into /tmp/fsar-site.
#
# 1. Evaluation at HMDB51's test-split size: 10 classes x 129 videos (1,290 ~ 1,292 test videos), 10,000
#    5-way 1-shot episodes (77.5 uses per video), ViT-B-16 random weights at 224 px, M=2, bf16 autocast,
#    batched (64 episodes per pass) from the prefix artifact (`benchmarks/evaluate.py --prefix`: the frozen
#    blocks 1..L-M of every video written to a real prefix artifact in a temporary root with the prefix
#    stage's code, float16 states, read back through PrefixStates), against 200 episodes one at a time
#    uncached; prints the prefix time and the scoring time apart, the agreement of every prediction, the
#    CUDA peak, and ends with `ratio= limit= agree=`. Target: 10,000 episodes in < 30 s on one H200,
#    prefix included.
# 2. Training step: `benchmarks/model.py --compare --check` on CUDA (bf16): device checks, the loss and
#    gradient agreement with the released structure (fp32), then the step times of reference, ours and
#    first_adapted (median of 10) with their CUDA peak-allocated growth; `train_ratio=`, `variant_ratio=`.
# 3. Per-row cost and peak memory: `benchmarks/model.py` (train step, eval with and without the cache, cache
#    per video; torch.cuda.max_memory_allocated per row).
# Each step runs under `timeout` (300 + 150 + 90 s); a failed step is reported and the next one still runs;
# the exit code is 1 when any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
case "${1:-}" in
    "") ;;
    --cpu-smoke) mode=cpu-smoke ;;
    --fetch-wheels) mode=fetch-wheels ;;
    *) echo "usage: bash benchmarks/gpu.sh [--cpu-smoke | --fetch-wheels]" >&2; exit 2 ;;
esac
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
# What the GPU image lacks of what the benchmarks import (the image has torch, numpy, pandas, pyarrow, fsspec,
# pyyaml, timm, huggingface-hub, regex, tqdm); versions are those of $PY here.
WHEELS=(open_clip_torch ftfy wcwidth pydantic pydantic_core annotated-types typing-inspection typing_extensions)

fetch_wheels() {
    mkdir -p .whl
    local name version
    for name in "${WHEELS[@]}"; do
        version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || return 1
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version" || return 1
    done
    ls -l .whl
}

use_wheels() {
    if "$PY" -c "import open_clip, pydantic" 2>/dev/null; then return 0; fi
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "open_clip or pydantic is missing for $PY and .whl/ has no wheels: run 'bash benchmarks/gpu.sh --fetch-wheels'" \
             "where PyPI is reachable and carry .whl" >&2
        return 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fsar-site .whl/*.whl || return 1
    export PYTHONPATH=/tmp/fsar-site${PYTHONPATH:+:$PYTHONPATH}
}

failed=()
step() {  # step NAME LIMIT_S CMD...: run under timeout, report rc and wall time, go on after a failure
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name"
    start=$(date +%s)
    timeout "$limit" "$@"
    rc=$?
    echo "-- $name: rc=$rc, $(( $(date +%s) - start )) s wall (start-up and model build included)"
    if [ "$rc" -ne 0 ]; then failed+=("$name (rc $rc$([ "$rc" -eq 124 ] && echo ", timed out after $limit s"))"); fi
}

if [ "$mode" = fetch-wheels ]; then
    fetch_wheels
    exit
fi
export PYTHONUNBUFFERED=1
if [ "$mode" = gpu ]; then
    use_wheels || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    DEVICE=(--device cuda --amp)
    EVAL=(--clip ViT-B-16 --image-size 224 --classes 10 --videos-per-class 129 --episodes 10000 --uncached-episodes 200
          --episodes-per-batch 64 --prefix-dtype float16)
    MODEL=(--clip ViT-B-16)
    REPEATS=10
    LIMITS=(300 150 90)
else
    export OMP_NUM_THREADS=1
    DEVICE=(--device cpu --threads 1)
    EVAL=(--clip fsar-micro --image-size 64 --classes 5 --videos-per-class 2 --episodes 8 --uncached-episodes 2
          --episodes-per-batch 4 --prefix-dtype float16)
    MODEL=(--clip fsar-micro --image-size 64)
    REPEATS=1
    LIMITS=(60 60 60)
fi
"$PY" - "$mode" <<'EOF' || exit 1
import importlib.util
import sys

import torch

import open_clip, pydantic  # noqa: E401 - the two packages the GPU image lacks (wheels)

for name in ("evaluate", "model"):  # every import of the two benchmarks, under this interpreter (main() does not run)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", f"benchmarks/{name}.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

where = torch.cuda.get_device_name(0) if sys.argv[1] == "gpu" else "cpu"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), open_clip {open_clip.__version__}, "
      f"pydantic {pydantic.__version__}; {where}")
if sys.argv[1] == "gpu" and not torch.cuda.is_available():
    sys.exit("no GPU is visible to torch; run with --cpu-smoke on a machine without one")
EOF

step "evaluation: batched episodes from the prefix artifact vs one at a time uncached" "${LIMITS[0]}" \
    "$PY" benchmarks/evaluate.py "${DEVICE[@]}" "${EVAL[@]}" --prefix
step "training step: reference vs ours vs first_adapted, peak memory" "${LIMITS[1]}" \
    "$PY" benchmarks/model.py "${DEVICE[@]}" "${MODEL[@]}" --compare --check --repeats "$REPEATS"
step "per-row cost and peak memory (one episode)" "${LIMITS[2]}" \
    "$PY" benchmarks/model.py "${DEVICE[@]}" "${MODEL[@]}" --repeats "$REPEATS"

if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all steps passed ($mode)"
