#!/usr/bin/env bash
# One device call that does every GPU check of a session (a lease is ~15 minutes, all tries together):
#   1. install the wheels the GPU image lacks; iso3d info + selftest (each kernel vs its twin)
#   2. in parallel: the kernel tests natively (one tile config per kernel, ISO3D_TRITON_AUTOTUNE=0)
#      and the training of iso3d-tiny (encoder, stage 1 under a time limit, then stage 2 and a
#      "stage 1 continued" control for the same number of steps, side by side)
#   3. the benchmarks, one after another on an otherwise idle GPU, with autotuning
# Every phase has its own timeout so the summary and the files under $OUT always come back.
# Usage (repository root, with ./.whl from ../shared/device/fetch-wheels.sh and data/cache rendered):
#   bash benchmarks/gpu_session.sh          # carry: .whl, data/cache
# Parts can be left out: TRAIN=0, TESTS="paths" (empty: none), BENCHES="names" (see bench calls below).
set -u
TRAIN=${TRAIN:-1}
TESTS=${TESTS:-tests/kernels tests/models/test_unet.py}
BENCHES=${BENCHES:-mv_attention unet_step sds hash_render}
TEST_LIMIT=${TEST_LIMIT:-170}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=8
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # the naive benchmarks end in OOM; keep the rest usable
OUT=${OUT:-/tmp/iso3d-gpu-out}
LOGS=/tmp/iso3d-logs
mkdir -p "$OUT" "$LOGS"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOGS/summary.txt"; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  > "$LOGS/pip.log" 2>&1 || say "pip install failed (see pip.log)"
export PYTHONPATH=/tmp/site:$PWD
ln -sfn ../kernels iso3d/kernels  # what setup.py's package_dir does for an installed copy
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv > "$LOGS/gpu.txt" 2>&1
python3 -c "import torch, triton, diffusers, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'diffusers', diffusers.__version__, 'open_clip', open_clip.__version__)" >> "$LOGS/gpu.txt" 2>&1
say "$(tail -1 "$LOGS/gpu.txt")"
# nerfacc compiles its CUDA extension on first use: start it now, on the CPU, while the GPU works.
(timeout 180 python3 -c "import nerfacc.cuda._backend as b; print('nerfacc _C:', b._C)" > "$LOGS/nerfacc_build.log" 2>&1) &
NERFACC=$!
ATTN=auto
ISO3D_TRITON_AUTOTUNE=0 timeout 45 python3 -m iso3d selftest > "$LOGS/selftest.log" 2>&1 || ATTN=torch
say "selftest: $(tail -3 "$LOGS/selftest.log" | tr '\n' ' ') -> training attention backend: $ATTN"

# -- phase 2: kernel tests || training ------------------------------------------------------------
# -x: pytest prints failures only at the end, which a timeout would cut off; stop at the first one.
TESTS_PID=
[ -n "$TESTS" ] && (ISO3D_TRITON_AUTOTUNE=0 timeout "$TEST_LIMIT" python3 -m pytest $TESTS -q -x --tb=short -p no:cacheprovider \
  -o addopts="--import-mode=importlib" > "$LOGS/tests.log" 2>&1; echo "tests rc=$?" >> "$LOGS/tests.log") &
[ -n "$TESTS" ] && TESTS_PID=$!

R=/tmp/gpurun C=/tmp/ctrl
common="--batch-size 64 --lr 5e-4 --train-size 4096 --cache-dir data/cache --checkpoint-every 1000000 --seed 0 --render-workers 16 --attention-backend $ATTN"
[ "$TRAIN" = 1 ] && (
  export ISO3D_TRITON_AUTOTUNE=0  # a tiny model: the default tile is fine and compiles once
  timeout 45 python3 -m iso3d train encoder --out $R --encoder-steps 600 --encoder-lr 1e-3 --time-limit 25 $common || exit 1
  timeout 100 python3 -m iso3d train stage1 --out $R --init $R/encoder/bundle --steps 1000000 --time-limit 70 $common || exit 2
  N=$(python3 -c "import json; print(int(json.load(open('$R/stage1/result.json'))['step'] * 0.8))")
  echo "stage 2 and the control run $N steps each"
  timeout 110 python3 -m iso3d train stage2 --out $R --init $R/stage1/bundle --steps "$N" --time-limit 80 $common > "$LOGS/train_stage2.log" 2>&1 &
  timeout 110 python3 -m iso3d train stage1 --out $C --init $R/stage1/bundle --steps "$N" --time-limit 80 $common > "$LOGS/train_control.log" 2>&1 &
  wait
) > "$LOGS/train.log" 2>&1
say "training rc=$? $(grep -h 'steps, final loss' "$LOGS"/train*.log | tr '\n' ' ')"
[ -n "$TESTS_PID" ] && wait $TESTS_PID
[ -n "$TESTS" ] && say "$(tail -3 "$LOGS/tests.log" | tr '\n' ' ')"
for d in $R/encoder $R/stage1 $R/stage2 $C/stage1; do
  [ -f $d/log.jsonl ] && cp $d/log.jsonl "$LOGS/$(echo $d | tr '/' '_').log.jsonl"
  [ -f $d/result.json ] && cp $d/result.json "$LOGS/$(echo $d | tr '/' '_').result.json"
done
[ -d $R/stage1/bundle ] && tar czf "$OUT/stage1.tgz" -C $R/stage1 bundle
[ -d $R/stage2/bundle ] && tar czf "$OUT/stage2.tgz" -C $R/stage2 bundle
[ -d $C/stage1/bundle ] && tar czf "$OUT/control.tgz" -C $C/stage1 bundle

# -- phase 3: benchmarks, alone on the GPU -------------------------------------------------------
wait $NERFACC; say "nerfacc: $(tail -1 "$LOGS/nerfacc_build.log")"
bench() {  # name timeout pytest-args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 -m pytest "$@" -q -p no:cacheprovider --benchmark-only --bench-rounds 5 \
    --benchmark-json "$LOGS/bench_$name.json" > "$LOGS/bench_$name.log" 2>&1
  say "bench $name rc=$?"
}
for b in $BENCHES; do
  case $b in
    mv_attention) bench mv_attention 80 benchmarks/kernels/bench_mv_attention.py ;;
    unet_step) bench unet_step 60 benchmarks/models/bench_unet_step.py -k "bf16" ;;
    sds) bench sds 110 benchmarks/generate/bench_sds_step.py ;;
    hash_render) bench hash_render 45 benchmarks/kernels/bench_hash_grid.py benchmarks/nerf/bench_render.py ;;
  esac
done

tar czf "$OUT/logs.tgz" -C "$LOGS" .
grep -h -A200 "iso3d side-by-side" "$LOGS"/bench_*.log | grep -v "^$" | cut -c1-150 | tail -80
say "done"
