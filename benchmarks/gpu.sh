#!/usr/bin/env bash
# GPU benchmark set (issues 15 and 23): the train stage and evaluation on one GPU, every target with OK/MISSED.
# Its GPU figures are unknown until it runs there once; `--cpu-smoke` runs the same commands at tiny sizes on CPU.
#
#   bash benchmarks/gpu.sh --fetch-wheels   # where PyPI is reachable, once: wheels the GPU image lacks, into .whl/ (ignored)
#   bash benchmarks/gpu.sh                  # on the GPU machine: about 5-6 minutes expected (not measured); at most 8: set-up
#                                           # (wheels, versions) under 60 s, step limits 425 s, steps 8 and 9 only when they end by 470 s
#   bash benchmarks/gpu.sh --cpu-smoke      # here: the same commands, tiny sizes, CPU; ends with "all steps passed"
#
# On the device tool (one call; .whl must be carried, the tree plus .whl stays under 64 MiB):
#   run(command="PYTHONUNBUFFERED=1 bash benchmarks/gpu.sh 2>&1 | tee $OUT/gpu.log", carry=[".whl"], timeout_s=600)
# Python: $PY, else .venv/bin/python, else python3 (the GPU image's: torch 2.11 + CUDA 13, Python 3.12). A module
# the image lacks is installed from .whl/ into /tmp/fsar-site (only the missing ones; the first lines list them).
#
# Steps (each under `timeout`; a failed step is reported and the next ones still run; exit code 1 if any failed),
# ViT-B-16 with random weights (saved once as a checkpoint file: a bundle must name its backbone), 224 px, bf16
# autocast, 5-way 1-shot, T=8, M=2, M_t=8, SGD; synthetic videos (`fsar synthetic`, 24 classes x 8 videos) decoded by
# the frames stage at 257 px:
#  1. data: `fsar synthetic`, the backbone file, `fsar frames`, `fsar descriptions` (the scripts, file backend), `fsar embeddings`;
#  2. benchmarks/train.py: the train stage's loop against its bare step on the same 60 episodes, the step's peak memory;
#  3. benchmarks/train.py --options-only: the step alone with CUDA graphs and with 4 episodes per step (each checked
#     against the plain step in fp32 first), and which flags to use (`recommend:`);
#  4. `fsar train` end to end (frames loading, validation and checkpoints included): 400 episodes, validation on 40 val
#     episodes every 200, with the flags step 3 recommends (if that run fails: again without them);
#  5. `fsar evaluate` end to end (the prefix in memory, the GPU default): 1,000 test episodes;
#  6. `fsar export` + `fsar predict`: 5 support classes of 1 clip, 10 query clips; latency per query;
#  7. benchmarks/evaluate.py at HMDB51's test-split size: 10 classes x 129 videos, 10,000 episodes (prefix in memory,
#     batched; prefix and scoring timed together) against 200 episodes one at a time uncached; bf16 agreement;
#  8. (when it can end by 470 s) benchmarks/frames.py --decode-only: the frames stage on HMDB51-like clips (320x240 MPEG-4
#     Part 2 with B-frames in AVI, 100-200 frames) with a worker per core, its clips/s and its ratio to a bare sequential decode;
#  9. (when it can end by 470 s) the step alone under torch.compile.
# Targets (issue 23): train stage end to end >= 25 episodes/s; 10,000 HMDB51-sized test episodes < 15 s prefix
# included; train step peak memory <= 4,247 MiB (the issue's figure).
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
    if [ -x .venv/bin/python ]; then PY=$PWD/.venv/bin/python; else PY=python3; fi
fi
# distribution:module pairs the GPU image may lack; a wheel is installed there only when its module is missing. The
# first nine are known missing; typer and its dependencies (the fsar CLI) are small and carried in case.
WHEELS=(open_clip_torch:open_clip ftfy:ftfy wcwidth:wcwidth pydantic:pydantic pydantic_core:pydantic_core
        annotated-types:annotated_types typing-inspection:typing_inspection typing_extensions:typing_extensions av:av
        typer:typer shellingham:shellingham annotated-doc:annotated_doc rich:rich markdown-it-py:markdown_it mdurl:mdurl
        pygments:pygments)

fetch_wheels() {
    mkdir -p .whl
    local pair name version
    for pair in "${WHEELS[@]}"; do
        name=${pair%%:*}
        version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name") || return 1
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version" || return 1
    done
    ls -l .whl
    du -sh .whl
}

use_wheels() {  # install the wheels of the modules $PY cannot import into /tmp/fsar-site
    local pair name module file missing=()
    for pair in "${WHEELS[@]}"; do
        name=${pair%%:*}; module=${pair##*:}
        if ! timeout 60 "$PY" -c "import $module" 2>/dev/null; then
            file=$(ls .whl/"${name//-/_}"-*.whl .whl/"$name"-*.whl 2>/dev/null | head -n 1)
            if [ -z "$file" ]; then
                echo "module $module is missing for $PY and .whl/ has no $name wheel: run 'bash benchmarks/gpu.sh --fetch-wheels'" \
                     "where PyPI is reachable and carry .whl" >&2
                return 1
            fi
            missing+=("$file")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then echo "wheels: none needed"; return 0; fi
    echo "wheels installed into /tmp/fsar-site: ${missing[*]##*/}"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fsar-site "${missing[@]}" || return 1
    export PYTHONPATH=/tmp/fsar-site${PYTHONPATH:+:$PYTHONPATH}
}

if [ "$mode" = fetch-wheels ]; then
    fetch_wheels
    exit
fi

export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PREFECT_SERVER_ANALYTICS_ENABLED=false
WORK=${FSAR_GPU_WORK:-/tmp/fsar-gpu-$mode}
rm -rf "$WORK" && mkdir -p "$WORK/logs"
ART=$WORK/artifacts VID=$WORK/videos BACKBONE=$WORK/backbone.pt
T_START=$SECONDS
failed=()
step() {  # step NAME LIMIT_S CMD...: run under timeout, output to stdout and $WORK/logs/NAME.log, go on after a failure
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit $limit s, $((SECONDS - T_START)) s into the run)"
    start=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log"
    rc=${PIPESTATUS[0]}
    echo "-- $name: rc=$rc, $((SECONDS - start)) s wall (start-up and model build included)"
    if [ "$rc" -ne 0 ]; then failed+=("$name (rc $rc$([ "$rc" -eq 124 ] && echo ", timed out after $limit s"))"); fi
    return "$rc"
}
fsar() { "$PY" -m pipeline.cli "$@"; }

if [ "$mode" = gpu ]; then
    use_wheels || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    DEVICE=cuda CLIP=ViT-B-16 SIZE=224 STORE=257 FRAMES=8 M=2 MT=8 PER_CLASS=8 VIDEO_FRAMES=32
    TRAIN_EPISODES=400 VAL_EVERY=200 VAL_EPISODES=40 EVAL_EPISODES=1000 QUERIES=10
    BENCH=(--episodes 60 --rounds 1) OPTIONS=(--option-steps 15)
    EVAL=(--device cuda --amp --clip ViT-B-16 --image-size 224 --classes 10 --videos-per-class 129 --episodes 10000 --uncached-episodes 200)
    LIMITS=(70 60 60 75 40 45 75 60 60)
    FRAMES_BENCH=(--hmdb-videos 96 --videos 2 --seconds 4)
else
    export OMP_NUM_THREADS=1
    DEVICE=cpu CLIP=fsar-micro SIZE=32 STORE=40 FRAMES=4 M=1 MT=1 PER_CLASS=3 VIDEO_FRAMES=16
    TRAIN_EPISODES=4 VAL_EVERY=2 VAL_EPISODES=2 EVAL_EPISODES=6 QUERIES=2
    BENCH=(--episodes 3 --rounds 1 --threads 1) OPTIONS=(--option-steps 1 --threads 1)
    EVAL=(--device cpu --threads 1 --clip fsar-micro --image-size 32 --frames 4 --classes 5 --videos-per-class 2 --episodes 8
          --uncached-episodes 2 --episodes-per-batch 4)
    LIMITS=(180 120 120 120 90 90 60 0 120)
    FRAMES_BENCH=(--hmdb-videos 4 --videos 1 --seconds 2)
fi
SETS=(--set "dataset.video_root=$VID" --set "model.clip=$CLIP" --set "model.pretrained=$BACKBONE" --set model.quick_gelu=false --set "model.image_size=$SIZE"
      --set "model.vision_adapted_layers=$M" --set "model.text_adapted_layers=$MT" --set "protocol.num_frames=$FRAMES"
      --set "frames.storage_size=$STORE" --set frames.max_frames=32 --set frames.decoder=pyav
      --set descriptions.backend=file --set "descriptions.corpus=$VID/scripts.yaml"
      --set train.optimizer=sgd --set train.lr=0.001 --set "train.device=$DEVICE" --set "evaluate.device=$DEVICE")
STAGE=(--dataset synthetic --preset demo --artifacts "$ART")
TRAIN_SETS=(--set train.epochs=1 --set "train.episodes_per_epoch=$TRAIN_EPISODES" --set train.warmup_epochs=0
            --set "train.val_every=$VAL_EVERY" --set "train.val_episodes=$VAL_EPISODES" --set train.checkpoint_every=200)

timeout 60 "$PY" - "$mode" <<'EOF' || exit 1
import sys

import torch

import av, open_clip, pydantic, typer  # noqa: E401 - what the GPU image lacked (wheels)

where = torch.cuda.get_device_name(0) if sys.argv[1] == "gpu" and torch.cuda.is_available() else "cpu"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (cuda {torch.version.cuda}), open_clip {open_clip.__version__}, "
      f"pydantic {pydantic.__version__}, av {av.__version__}, typer {typer.__version__}; {where}; {torch.get_num_threads()} CPU threads")
import importlib

for name in ("torchvision", "PIL", "matplotlib", "pyarrow", "pandas", "yaml", "fsspec"):  # the image's own (no wheels carried)
    try:
        print(f"{name} {getattr(importlib.import_module(name), '__version__', '?')}", end="; ")
    except ImportError as exc:
        print(f"{name} MISSING ({exc}): the steps that need it will fail", end="; ")
print()
if sys.argv[1] == "gpu" and not torch.cuda.is_available():
    sys.exit("no GPU is visible to torch; run with --cpu-smoke on a machine without one")
EOF

data() {
    set -e
    fsar synthetic --out "$VID" --videos-per-class "$PER_CLASS" --size 64 --frames "$VIDEO_FRAMES"
    "$PY" - "$CLIP" "$BACKBONE" <<'EOF'
import sys

import torch

from pipeline.model.backbone import load_backbone

torch.manual_seed(0)
backbone = load_backbone(sys.argv[1], None, 224 if sys.argv[1] == "ViT-B-16" else 32, quick_gelu=False)
torch.save(backbone.clip.state_dict(), sys.argv[2])
print(f"random {sys.argv[1]} weights saved to {sys.argv[2]}")
EOF
    fsar frames "${STAGE[@]}" "${SETS[@]}"
    fsar descriptions "${STAGE[@]}" "${SETS[@]}"
    fsar embeddings "${STAGE[@]}" "${SETS[@]}"
}
step data "${LIMITS[0]}" bash -c "$(declare -f data fsar); $(declare -p PY VID BACKBONE CLIP PER_CLASS VIDEO_FRAMES STAGE SETS); data"

step train-benchmark "${LIMITS[1]}" "$PY" benchmarks/train.py --device "$DEVICE" --artifacts "$ART" --video-root "$VID" "${SETS[@]}" "${BENCH[@]}"
step train-options "${LIMITS[2]}" "$PY" benchmarks/train.py --device "$DEVICE" --artifacts "$ART" --video-root "$VID" "${SETS[@]}" \
    "${BENCH[@]}" --options-only --no-compile "${OPTIONS[@]}"
RECOMMEND=$(sed -n 's/^recommend: //p' "$WORK/logs/train-options.log" | tail -n 1)

train_e2e() {
    # shellcheck disable=SC2086 # $RECOMMEND is a list of --set flags
    if [ -n "$RECOMMEND" ]; then
        echo "with the recommended flags: $RECOMMEND"
        fsar train "${STAGE[@]}" "${SETS[@]}" "${TRAIN_SETS[@]}" $RECOMMEND && return 0
        echo "the run with $RECOMMEND failed; again without them"
    fi
    fsar train "${STAGE[@]}" "${SETS[@]}" "${TRAIN_SETS[@]}"
}
step train-e2e "${LIMITS[3]}" bash -c "$(declare -f train_e2e fsar); $(declare -p PY STAGE SETS TRAIN_SETS RECOMMEND); train_e2e"

step evaluate-e2e "${LIMITS[4]}" "$PY" -m pipeline.cli evaluate "${STAGE[@]}" "${SETS[@]}" "${TRAIN_SETS[@]}" --episodes "$EVAL_EPISODES"

predict() {
    set -e
    fsar export "${STAGE[@]}" "${SETS[@]}" "${TRAIN_SETS[@]}" --out "$WORK/bundle"
    mkdir -p "$WORK/support" "$WORK/queries"
    local classes=(moving_up moving_down moving_diagonally_down_to_the_left moving_diagonally_up_to_the_right growing_then_moving_right)
    local c i=0
    for c in "${classes[@]}"; do
        mkdir -p "$WORK/support/$c" && ln -s "$VID/$c/${c}_000.mp4" "$WORK/support/$c/"
        ln -s "$VID/$c/${c}_001.mp4" "$WORK/queries/" && i=$((i + 1))
        if [ "$i" -lt "$QUERIES" ]; then ln -s "$VID/$c/${c}_002.mp4" "$WORK/queries/"; i=$((i + 1)); fi
    done
    local t0=$SECONDS
    fsar predict --model "$WORK/bundle" --backbone "$BACKBONE" --support "$WORK/support" --query "$WORK/queries" --device "$DEVICE" \
        --out "$WORK/predictions.csv"
    echo "predict command: $((SECONDS - t0)) s wall for $(ls "$WORK/queries" | wc -l) queries (start-up, model build, support encoding included)"
}
step predict "${LIMITS[5]}" bash -c "$(declare -f predict fsar); $(declare -p PY WORK VID BACKBONE DEVICE QUERIES STAGE SETS TRAIN_SETS); predict"

step evaluate-benchmark "${LIMITS[6]}" "$PY" benchmarks/evaluate.py "${EVAL[@]}"

if [ "$mode" != gpu ] || [ $((SECONDS - T_START + LIMITS[8])) -le 470 ]; then
    step frames-benchmark "${LIMITS[8]}" "$PY" benchmarks/frames.py --decode-only "${FRAMES_BENCH[@]}" --out "$WORK/frames-bench"
else
    echo "== frames-benchmark: skipped ($((SECONDS - T_START)) s into the run)"
fi

if [ "$mode" = gpu ] && [ $((SECONDS - T_START + LIMITS[7])) -le 470 ]; then
    step train-compile "${LIMITS[7]}" "$PY" benchmarks/train.py --device "$DEVICE" --artifacts "$ART" --video-root "$VID" "${SETS[@]}" \
        "${BENCH[@]}" --options-only --only compile "${OPTIONS[@]}"
else
    echo "== train-compile: skipped ($mode, $((SECONDS - T_START)) s into the run)"
fi

# ---- targets ------------------------------------------------------------------------------------------------------
target() {  # target DESCRIPTION VALUE OP LIMIT UNIT
    local what=$1 value=$2 op=$3 limit=$4 unit=$5 verdict
    if [ -z "$value" ]; then verdict="MISSED (no value: see its step above)"
    elif "$PY" -c "import sys; v, l = float(sys.argv[1]), float(sys.argv[3]); sys.exit(0 if (v >= l if sys.argv[2] == '>=' else v < l if sys.argv[2] == '<' else v <= l) else 1)" "$value" "$op" "$limit"
    then verdict=OK; else verdict=MISSED; fi
    echo "target: $what: $value $unit ($op $limit) $verdict${TARGET_NOTE:-}"
}
logs=$WORK/logs
train_rate=$(sed -n 's/^\[fsar\] train: [0-9]* episodes in [0-9.]* s (\([0-9.]*\) episodes\/s.*/\1/p' "$logs/train-e2e.log" 2>/dev/null | tail -n 1)
eval_s=$(sed -n 's/^batched + cached .*: 10000 episodes in \([0-9.]*\) s.*/\1/p' "$logs/evaluate-benchmark.log" 2>/dev/null | tail -n 1)
[ "$mode" = gpu ] || eval_s=$(sed -n 's/^batched + cached .*: [0-9]* episodes in \([0-9.]*\) s.*/\1/p' "$logs/evaluate-benchmark.log" 2>/dev/null | tail -n 1)
peak=$(sed -n 's/^train step peak memory .*: \([0-9.]*\) MiB/\1/p' "$logs/train-benchmark.log" 2>/dev/null | tail -n 1)
[ "$mode" = gpu ] || TARGET_NOTE=" (cpu-smoke: tiny sizes on CPU, the targets are the GPU's)"
echo "== summary ($mode, $((SECONDS - T_START)) s)"
grep -h "^frames stage, HMDB51-like\|^stage / bare sequential\|^HMDB51 (6766\|^loop_ratio=\|^evaluate benchmark: \|^predictions of the \|^option \|^recommend: \|^\[fsar\] evaluate: .* episodes in\|^\[fsar\] predict: .* queries in\|^predict command:\|^train step peak" \
    "$logs"/*.log 2>/dev/null || true
target "train stage end to end (loading, validation, checkpoints included${RECOMMEND:+; $RECOMMEND})" "$train_rate" ">=" 25 "episodes/s"
if [ "$mode" = gpu ]; then what="10,000 HMDB51-sized test episodes, prefix included"; else what="8 tiny test episodes (for 10,000 HMDB51-sized), prefix included"; fi
target "$what" "$eval_s" "<" 15 "s"
if [ "$mode" = gpu ]; then
    target "train step peak memory" "$peak" "<=" 4247 "MiB"
else
    echo "target: train step peak memory: n/a on CPU (CUDA allocated memory)${TARGET_NOTE}"
fi
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all steps passed ($mode, $((SECONDS - T_START)) s)"
