#!/usr/bin/env bash
# One device call that does every GPU check of a session (a lease is ~15 minutes, all tries together):
#   1. install the wheels the GPU image lacks; iso3d info + selftest (each kernel vs its twin)
#   2. in parallel: the kernel and renderer tests natively (one tile config per kernel,
#      ISO3D_TRITON_AUTOTUNE=0) and the training of iso3d-tiny (encoder, stage 1, then side by side:
#      stage 2, stage 2 with reference dropout, and a "stage 1 continued" control)
#   3. the benchmarks, one after another on an otherwise idle GPU, with autotuning
# Every phase has its own timeout so the summary and the files under $OUT always come back.
# Usage (repository root, with ./.whl from ../shared/device/fetch-wheels.sh and data/cache rendered):
#   bash benchmarks/gpu_session.sh          # carry: .whl and the data/cache files training needs
# Parts can be left out: TRAIN=0, TESTS="paths" (empty: none), BENCHES="names" (see bench calls below);
# SDS_K / TEST_K="pytest -k expression" pick SDS-step cases / tests. The training recipe's knobs are in phase 2.
# Measured on an H100 in the sixth session (RESULTS.md): analytic normals, the CUDA-graphed UNet (now on
# by default) and the field states, with this call (about 7 minutes of run with the training):
#   TRAIN=1 REFDROP=0 ENC_LIMIT=30 S1_LIMIT=190 S2_LIMIT=100 BENCHES=sds SDS_LIMIT=150 \
#     SDS_K="(optimized or cuda_graph or forward_normals or field_state or (central_normals and 256)) and not phases" \
#     bash benchmarks/gpu_session.sh
# Next (model card, "Reference dropout"): stage 2 with reference dropout 0.5 beside plain stage 2 and the
# control, from the retrain's stage 1, with nothing else on the GPU (about 3 minutes of run):
#   S1_BUNDLE=runs/h100-retrain-s6/stage1 S2_LIMIT=150 TESTS="" BENCHES="" bash benchmarks/gpu_session.sh
#   (carry .whl, runs/h100-retrain-s6/stage1 and data/cache/procedural-train-16384-bf995f1c72.npz)
# Or a fresh retrain with Min-SNR-5 weighting, which beat the plain loss on PSNR and silhouette IoU in
# two CPU runs (model card, seventh session): TRAIN=1 SNR_GAMMA=5 TESTS="" BENCHES="" bash benchmarks/gpu_session.sh
# Better (model card, tenth session: on the CPU recipe +1.1 dB and 2x silhouette IoU over the plain
# loss): a retrain with v-prediction on a zero-terminal-SNR schedule, with reference dropout as set:
#   TRAIN=1 PREDICTION=v_prediction TESTS="" BENCHES="" bash benchmarks/gpu_session.sh
# The shipped iso3d-tiny (model card, 2026-11-27) is that schedule on single upright primitives at 1.5x,
# with a colour-jittered encoder, trained on the 2-core CPU; a GPU retrain of it, or a step towards
# composites (MAX_PRIMITIVES=2..3):
#   TRAIN=1 PREDICTION=v_prediction MAX_PRIMITIVES=1 ORIENTATION=upright OBJECT_SCALE=1.5 ENC_JITTER=0.3 TESTS="" BENCHES="" bash benchmarks/gpu_session.sh
# Next for the 15-minute goal (RESULTS.md): the VAE encode eagerly vs through torch.compile (new phase
# vae_encode_compiled; the first call compiles), beside the step it is part of, at both stages:
#   TRAIN=0 TESTS="" BENCHES=sds SDS_LIMIT=300 SDS_K="phases and not render and not unet" bash benchmarks/gpu_session.sh
# and, in the same call (TRACE=240), how soon a real SDS run's field sharpens (phase 3's TRACE, below).
# Eighth session: the VAE encode's speed-ups (iso3d.models.latent_encoder) alone (bench "vae", while
# nerfacc compiles) and inside the fastest step (sds -k vae_options), then the trace:
#   TRAIN=0 TESTS="" BENCHES="vae sds" SDS_LIMIT=220 SDS_K=vae_options TRACE=150 bash benchmarks/gpu_session.sh
# (measured: RESULTS.md, eighth session; the trace puts a full run at 21.4 min, render-bound at ~18 ns per
# sample). Next: where the step's time goes, by the profiler, at both stages, and a trace that now also
# records the samples marched before pruning (about 8 minutes of run with nerfacc's build):
#   TRAIN=0 TESTS="" BENCHES="" PROFILE="64 256" TRACE=150 bash benchmarks/gpu_session.sh
# Ninth session (after its profile showed einsum's chunked batched GEMMs and the Jacobian's scattered
# stores): the fused density head and the axis-major Jacobian, beside the commit before them (32b4d96):
#   git archive 32b4d96 | tar -x -C runs/base   # then carry .whl, runs/base, runs/device/nerfacc_build.tgz
#   TRAIN=0 TESTS="" BENCHES="mlp_head jacobian density_head" BASE=runs/base BASE_BENCHES="field_state jacobian" \
#     PROFILE="256" PROFILE_STATES=blob NERFACC_BUILD=runs/device/nerfacc_build.tgz bash benchmarks/gpu_session.sh
# (measured: RESULTS.md, ninth session: the default step 1.26x faster at 256^2, the full-run estimate
# 21.7 -> 17.9-18.2 min; the fused op's first version 2.9x slower, since rewritten without spills.)
# Next (done in the thirteenth session, below: the fused op is now the default): the rewritten fused op against the default, with the head kernels autotuned, its
# kernels' tests natively, the kernel-level comparison at 2^22 points and a profile of the fused step
# (about 6 minutes of run):
#   TRAIN=0 TESTS="tests/kernels/test_density_gradient.py tests/kernels/test_mlp_head.py" \
#     BENCHES="density_head density_gradient" GRADIENT_K=22 PROFILE=256 PROFILE_STATES=blob PROFILE_HEAD=fused \
#     NERFACC_BUILD=runs/device/nerfacc_build.tgz bash benchmarks/gpu_session.sh
# then: python benchmarks/generate/estimate_run.py <the call's bench_density_head.json>
# Thirteenth session (measured: RESULTS.md and the model card): a GPU retrain of the shipped recipe, the
# data cache rendered on the development machine and carried (.whl + data/cache/procedural-train-16384-
# ebc906692e.npz: 56 MB of the 64 MiB carry), with the fused op's tests beside it (9.2 min of run):
#   TRAIN=1 PREDICTION=v_prediction MAX_PRIMITIVES=1 ORIENTATION=upright OBJECT_SCALE=1.5 ENC_JITTER=0.3 \
#     ENC_STEPS=600 ENC_LIMIT=50 S1_LIMIT=290 S2_LIMIT=140 S2_PLAIN=0 BENCHES="" \
#     TESTS="tests/kernels/test_density_gradient.py tests/kernels/test_mlp_head.py" bash benchmarks/gpu_session.sh
# (stage 1 reached its 2000 steps in 287 s: S1_STEPS can go up), then on the same warm machine (1.8 min):
#   TRAIN=0 TESTS="" BENCHES=density_head HEAD_K="not torch" bash benchmarks/gpu_session.sh
# For #5 (model card: 6000 visits made one object's shape; runs before the thirteenth session gave ~20 per
# object, its H100 run ~39), where iso3d-tiny's training step goes (5-7 steps/s at batch 256), in the same call:
#   ... TRAIN_PROFILE=1 ...   (about 40 s; then a long, resumable training run is the next step)
# Next for #6 (16.4 min estimated, goal 15; RESULTS.md, thirteenth session): where the fused default's
# step goes at both stages, to split the 64^2 step's 59 ms fixed part (UNet, VAE encode + backward,
# launches, the pruning pass), with nothing else on the GPU (about 5 minutes of run with nerfacc's build):
#   TRAIN=0 TESTS="" BENCHES="" PROFILE="64 256" PROFILE_HEAD=fused NERFACC_BUILD=runs/device13/nerfacc_build.tgz \
#     bash benchmarks/gpu_session.sh
# Next for #6 (fifteenth session, CPU only; supersedes the profile above): the hash-grid kernels changed
# without a GPU: relaxed atomics in the backward (sm_90a SASS had a MEMBAR.ALL.GPU and an L1 invalidation
# around each of 19 atomics per point and level) and F = 2 in two 1D lanes (no layout conversion: 0
# barriers instead of 31-79 per program; jac fwd 110 -> 64 registers) and one 64-bit load per table row. Measure them against the commit
# before them, b6c3066, in one call (about 8 minutes of run with nerfacc's build):
#   rm -rf runs/base && mkdir -p runs/base && git archive b6c3066 | tar -x -C runs/base
#   (carry .whl, runs/base, runs/device13/nerfacc_build.tgz)
#   TRAIN=0 TESTS="tests/kernels/test_hash_grid.py tests/kernels/test_density_gradient.py" \
#     BENCHES="density_head density_gradient" HEAD_K=fused GRADIENT_K="22 and not torch" \
#     BASE=runs/base BASE_BENCHES="density_head density_gradient" NERFACC_BUILD=runs/device13/nerfacc_build.tgz \
#     bash benchmarks/gpu_session.sh
# then: python benchmarks/generate/estimate_run.py <bench_density_head.json> (and the base's) --trace
# benchmarks/figures/trace_h100_s8.json. If time is left on the warm machine: PROFILE="64 256" PROFILE_HEAD=fused.
# Seventeenth session (CPU only), superseding the call above (about 11 minutes of run; trim SDS_K or
# TRACE if the lease is short):
#   rm -rf runs/base && mkdir -p runs/base && git archive b6c3066 | tar -x -C runs/base
#   (carry .whl, runs/base, runs/device13/nerfacc_build.tgz)
#   TRAIN=0 TESTS="tests/kernels/test_hash_grid.py tests/kernels/test_density_gradient.py tests/models/test_cuda_graph.py" \
#     BENCHES="density_head density_gradient sds" HEAD_K=fused GRADIENT_K="22 and not torch" \
#     SDS_K="test_sds_step and cuda_graph" SDS_LIMIT=200 TRACE=90 \
#     BASE=runs/base BASE_BENCHES="density_head density_gradient" NERFACC_BUILD=runs/device13/nerfacc_build.tgz \
#     bash benchmarks/gpu_session.sh
# What is new in it: (1) the graphed step with the attention "auto" now picks for SDS (SDPA on the
# concatenated views, from the second session's H200 UNet table) beside the Triton kernel forced, never
# timed in the step; the density_head cases, and so the estimate, use the new choice, the base's use
# Triton; (2) TRACE=90: `iso3d generate --device cuda` now runs the diffusion model in bf16 (it ran
# fp32 before, unlike every benchmark) and writes its checkpoints from a background thread: the first
# real bf16 generate steps (against the eighth session's fp32 trace) and checkpoints on a GPU; (3) the
# CUDA-graph capture test with both attention backends; (4) whether the carried nerfacc build loads
# without compiling (the summary line "nerfacc: the carried build loads as nerfacc.csrc").
# Eighteenth session (H100; RESULTS.md): the F = 2 lanes made the step 1.13-1.30x slower and were
# reverted (kernels = 82e3dd0's: relaxed atomics), attention "auto" is the Triton kernel first again,
# and the estimate is 16.0 min with its 64^2 stage measured on b6c3066's kernels. Next (about 9.5 min of
# run): the kernels' tests natively, the density-head step of this tree at both stages (the estimate's
# input; b6c3066's was 16.4 min on the same kind of machine), and a bf16 trace long enough to pass the
# switch to 256^2 (the 75 s one reached step 1,200 at ~44 ms per step and kept 4-17 % fewer samples
# per ray than the fp32 trace the estimate uses); it writes $OUT/trace.json for estimate_run.py --trace:
#   (carry .whl, runs/device13/nerfacc_build.tgz)
#   TRAIN=0 TESTS="tests/kernels/test_hash_grid.py tests/kernels/test_density_gradient.py" \
#     BENCHES=density_head HEAD_K=fused TRACE=300 NERFACC_BUILD=runs/device13/nerfacc_build.tgz \
#     bash benchmarks/gpu_session.sh
# then: python benchmarks/generate/estimate_run.py <bench_density_head.json> --trace <trace.json or
# benchmarks/figures/trace_h100_s8.json>. Note: since the eighteenth session the trace's SIGINT ends
# the run after the step in progress (iso3d.utils.interrupt) and saves its checkpoint.
# Nineteenth session (no GPU): a GroupNorm → SiLU Triton op that keeps the channels-last layout
# (iso3d.kernels.group_norm), swapped into the VAE encoder by latent_encoder(fused_group_norm=True).
# The 64^2 step's fixed cost (59 of 73 ms) is mostly the UNet and the VAE encode + backward (ninth
# session's profile: 278 cuDNN layout transforms per step), and channels-last alone was 1.4x slower
# because PyTorch's GroupNorm returns NCHW. Nothing of it is timed yet. Next, two calls on one machine:
#   A (about 7 min of run; carry .whl, runs/device13/nerfacc_build.tgz): the new op's and the hash
#   grid's tests natively, the op alone, the VAE alone, and the density-head step with the VAE as now
#   and channels-last + fused norms (provider suffix _vae_nhwc_gn: its own row in estimate_run.py):
#   (before: rm -rf runs/base && mkdir -p runs/base && git archive c9f8ff1 | tar -x -C runs/base; carry runs/base)
#   TRAIN=0 TESTS="tests/kernels/test_group_norm.py tests/models/test_fused_norm.py tests/kernels/test_mlp_head.py tests/kernels/test_hash_grid.py tests/kernels/test_density_gradient.py" \
#     BENCHES="vae group_norm density_head" VAE_K="eager or fused_norm or channels_last and not cudnn" HEAD_K=fused \
#     HEAD_LIMIT=240 TEST_LIMIT=200 BASE=runs/base BASE_BENCHES=density_head NERFACC_BUILD=runs/device13/nerfacc_build.tgz \
#     bash benchmarks/gpu_session.sh
#   The base (the eighteenth session's last commit) gives the same-machine before for the density-only
#   head in the pruning pass (ImplicitVolume.density now runs iso3d.kernels.mlp_head: no [P, 64] fp32
#   hidden layer written for the ~10 M marched samples of a 256^2 step), which the vae_nchw rows include.
#   (8 density-head cases: the eighteenth session's 4 took about 60 s; both VAE variants were run on the
#   CPU through _field_state_case with the tiny latent model, the GPU-only graphed path was not). With
#   time to spare, add PROFILE=64 PROFILE_STATES=surface PROFILE_HEAD=fused PROFILE_VAE=vae_nhwc_gn
#   (~40 s): whether the 185 + 93 layout transforms per 64^2 step went (part of them are the UNet's 66
#   convolutions, which stay NCHW).
#   B (about 5 min): the bf16 trace past step 5000 (TRAIN=0 TESTS="" BENCHES="" TRACE=280 ...).
# then: python benchmarks/generate/estimate_run.py <A's bench_density_head.json> --trace <B's trace.json
# or benchmarks/figures/trace_h100_s8.json>. If vae_nhwc_gn wins, wire it into generate (GenerateConfig).
# Twentieth session (H100; RESULTS.md): calls A and B above, with the trace beside the tests
# (TRACE_WITH_TESTS=1: its samples per ray do not depend on step times) and the base left out. The fused
# VAE won in the step (now GenerateConfig.fused_vae_norms) and the estimate is 13.7 min over the new bf16
# trace (benchmarks/figures/trace_h100_s20_bf16.json, estimate_run.py's default). Not yet run natively:
# tests/models/test_fused_norm.py with TF32 off. Next, one call (about 4 min of run): that test, the
# density-head step again with more rounds (BENCH_ROUNDS), and a profile of the fused 64^2 step:
#   TRAIN=0 TESTS="tests/models/test_fused_norm.py tests/kernels/test_group_norm.py" BENCHES="density_head group_norm" \
#     HEAD_K=fused BENCH_ROUNDS=10 PROFILE=64 PROFILE_STATES=surface PROFILE_HEAD=fused PROFILE_VAE=vae_nhwc_gn \
#     NERFACC_BUILD=runs/device13/nerfacc_build.tgz bash benchmarks/gpu_session.sh
# Every call leaves nerfacc's build in $OUT (nerfacc_build.tgz); the thirteenth session's is kept at
# runs/device13/nerfacc_build.tgz on the development machine (runs/ is not in git): carry it and set
# NERFACC_BUILD to skip the ~70-90 s build. It fits only the same torch/CUDA/GPU arch and install path.
# Until the seventeenth session it was rebuilt anyway; the unpacking below says why and now loads the
# carried .so directly (tried on the CPU with a stand-in extension, not yet on a GPU: the summary line
# "nerfacc: the carried build loads" and nerfacc_build.log's time say whether it worked).
set -u
TRAIN=${TRAIN:-1}
# The mv_attention suite (~4.6 min natively) passed on the H200 on 2026-11-26; it is left out by default
# because it shares the GPU with the training phase and slowed it (add it to TESTS when the kernel changes).
TESTS=${TESTS-tests/models/test_cuda_graph.py tests/kernels/test_hash_grid.py tests/nerf}
BENCHES=${BENCHES-mv_attention unet_step sds vae hash_render}  # empty: none
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
# NERFACC_BUILD: a nerfacc_build.tgz that an earlier call left in $OUT (carry it): unpacked first,
# so that the build finds its objects up to date (if torch and nerfacc are the same versions).
# torch's JIT-extension folder, as torch.utils.cpp_extension names it (py312_cu130 on the GPU image)
EXT_DIR=$(python3 -c "import os; from torch.utils.cpp_extension import _get_build_directory as d
print(os.path.dirname(d('nerfacc_cuda', False)))" 2>/dev/null || echo "$HOME/.cache/torch_extensions/py312_cu130")
NERFACC_BUILD=${NERFACC_BUILD:-}
# Why it was rebuilt until the seventeenth session: pip has just installed nerfacc's sources, newer than
# the carried objects, and ninja rebuilds an output whose .ninja_log mtime is older than its newest
# input; touching the objects (the ninth to thirteenth sessions) also makes ninja find the .ninja_deps
# record older than the object ("stored deps info out of date"). Checked with ninja -d explain on a toy
# build. The deps also list torch's and CUDA's headers, whose mtimes this script does not control, so:
#   1. nerfacc's _backend first tries `from nerfacc import csrc` (a prebuilt extension): a csrc.py that
#      loads the carried .so directly skips torch's JIT and ninja altogether; if it fails to load
#      (another torch or CUDA), it is removed and
#   2. the JIT runs, with the objects' archived mtimes kept and nerfacc's sources dated back, so ninja
#      rebuilds only what really changed (build_explain.log says what and why).
if [ -n "$NERFACC_BUILD" ]; then
  mkdir -p "$EXT_DIR" && tar xzf "$NERFACC_BUILD" -C "$EXT_DIR" \
    && find /tmp/site/nerfacc -exec touch -h -d '2001-01-01 00:00' {} + && say "unpacked $NERFACC_BUILD"
  (cd "$EXT_DIR/nerfacc_cuda" && ninja -n -d explain) > "$LOGS/nerfacc_build_explain.log" 2>&1
  cat > /tmp/site/nerfacc/csrc.py <<PY
# Written by benchmarks/gpu_session.sh: the carried nerfacc_cuda.so, loaded without torch's JIT.
import importlib.util

import torch  # noqa: F401  (first: the extension links against torch's libraries)

_spec = importlib.util.spec_from_file_location("nerfacc_cuda", "$EXT_DIR/nerfacc_cuda/nerfacc_cuda.so")
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
globals().update({k: getattr(_module, k) for k in dir(_module) if not k.startswith("__")})
PY
  if python3 -c "from nerfacc import csrc; csrc.traverse_grids" > "$LOGS/nerfacc_prebuilt.log" 2>&1; then
    say "nerfacc: the carried build loads as nerfacc.csrc (no JIT)"
  else
    rm -f /tmp/site/nerfacc/csrc.py; say "nerfacc: the carried .so did not load (nerfacc_prebuilt.log); JIT"
  fi
fi
# NERFACC=0: skip the build (nothing in this call renders through nerfacc; saves ~90 s of 8 cores).
NERFACC=${NERFACC:-1}
if [ "$NERFACC" = 1 ]; then
  (timeout 180 python3 -c "import time; t = time.time(); import nerfacc.cuda._backend as b; print('nerfacc _C:', b._C, f'in {time.time() - t:.0f} s')" > "$LOGS/nerfacc_build.log" 2>&1) &
  NERFACC_PID=$!
fi
# The tiny model trains with the PyTorch attention twin (head dim 16: nothing to gain from the
# kernel, and no compile on the clock); the self-test runs beside the kernel tests.
ATTN=${ATTN:-torch}
(ISO3D_TRITON_AUTOTUNE=0 timeout 90 python3 -m iso3d selftest > "$LOGS/selftest.log" 2>&1; echo "selftest rc=$?" >> "$LOGS/selftest.log") &
SELFTEST=$!

TRACE=${TRACE:-0}
TRACE_DTYPE=${TRACE_DTYPE:-bf16}
# TRACE_WITH_TESTS=1: the trace starts beside the phase-2 tests instead of last (estimate_run.py reads only
# its samples per ray, which do not depend on the step times the tests disturb), and phase 3 waits for it.
TRACE_WITH_TESTS=${TRACE_WITH_TESTS:-0}
run_trace() {
  ISO3D_TRITON_AUTOTUNE=0 timeout -s INT "$TRACE" python3 -m iso3d generate examples/red_ball.png -o /tmp/trace --steps 10000 --device cuda --dtype "$TRACE_DTYPE" \
    > "$LOGS/trace.log" 2>&1
  OUT="$OUT" TRACE_DTYPE="$TRACE_DTYPE" python3 - > "$LOGS/trace.txt" 2>&1 <<'PY'
import json, os
import torch
s = torch.load("/tmp/trace/checkpoint.pt", map_location="cpu", weights_only=False)
spr, sec = s["samples_per_ray"], s["step_seconds"]
# In estimate_run.py's --trace format (as benchmarks/figures/trace_h100_s8.json), with the step times
json.dump({"what": f"samples per ray kept per SDS step of iso3d generate examples/red_ball.png --steps 10000 "
                   f"--device cuda --dtype {os.environ['TRACE_DTYPE']} (official field, renderer, schedule; "
                   f"iso3d-tiny guidance), stopped at step {len(spr)}",
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "switch_to_256_at_step": 5000, "samples_per_ray": spr, "step_seconds": sec,
           "marched_per_ray": s.get("marched_per_ray")}, open(os.path.join(os.environ["OUT"], "trace.json"), "w"))
marched = [0.0 if m is None else m for m in s.get("marched_per_ray", [])]  # None: a step recorded before the field existed
edges = [0, 1, 10, 50, 100, 200, 300, 400, 500, 750] + list(range(1000, len(spr) + 500, 500))
for a, e in zip(edges, edges[1:]):
    b, t = spr[a:e], sorted(sec[a:e])
    if not b:
        break
    m = marched[a:e] or [0.0]
    print(f"steps {a}-{a + len(b) - 1}: samples/ray mean {sum(b) / len(b):.1f} (min {min(b):.1f}, max {max(b):.1f}), "
          f"marched {sum(m) / len(m):.1f}; step median {t[len(t) // 2] * 1e3:.1f} ms")
PY
  say "trace: $(tail -4 "$LOGS/trace.txt" | tr '\n' ' ')"
  tar czf "$OUT/logs.tgz" -C "$LOGS" .
}
TRACE_PID=
[ "$TRACE" -gt 0 ] && [ "$TRACE_WITH_TESTS" = 1 ] && { run_trace & TRACE_PID=$!; }

# -- phase 2: kernel tests || training ------------------------------------------------------------
# -x: pytest prints failures only at the end, which a timeout would cut off; stop at the first one.
TESTS_PID=
[ -n "$TESTS" ] && (
  [ "$NERFACC" = 1 ] && for _ in $(seq 90); do grep -q "nerfacc _C" "$LOGS/nerfacc_build.log" 2>/dev/null && break; sleep 2; done  # the renderer tests need it
  DEADLINE=$(( $(date +%s) + TEST_LIMIT ))
  for t in $TESTS; do  # one run per path, so a failure in one does not hide the others
    LEFT=$(( DEADLINE - $(date +%s) )); [ $LEFT -le 5 ] && { echo "$t: not run (time)" >> "$LOGS/tests.log"; continue; }
    echo "== $t" >> "$LOGS/tests.log"
    ISO3D_TRITON_AUTOTUNE=0 timeout $LEFT python3 -m pytest $t ${TEST_K:+-k "$TEST_K"} -q -x --tb=short -p no:cacheprovider \
      -o addopts="--import-mode=importlib" >> "$LOGS/tests.log" 2>&1; echo "$t rc=$?" >> "$LOGS/tests.log"
  done) &
[ -n "$TESTS" ] && TESTS_PID=$!

# Training recipe (env overrides): encoder, stage 1 with warm-up + cosine and a weight average, then
# side by side from the same stage-1 bundle: stage 2 (EMA), stage 2 with reference dropout, and the
# control (stage 1 continued), all with the same steps, rate and average.
R=/tmp/gpurun C=/tmp/ctrl D=/tmp/refdrop
BATCH=${BATCH:-256} TRAIN_SIZE=${TRAIN_SIZE:-16384} EMA=${EMA:-0.998}
ENC_STEPS=${ENC_STEPS:-1500} ENC_LIMIT=${ENC_LIMIT:-40}
S1_STEPS=${S1_STEPS:-2000} S1_LR=${S1_LR:-1e-3} S1_LIMIT=${S1_LIMIT:-250}
S2_STEPS=${S2_STEPS:-800} S2_LR=${S2_LR:-3e-4} S2_LIMIT=${S2_LIMIT:-120} REF_DROP=${REF_DROP:-0.5}
# MP: autocast precision (bf16 sends the attention to flash SDPA). The cosine ends at the steps or the
# time limit, whichever comes first (--cosine-to-time-limit), so a time-boxed stage always anneals.
MP=${MP:-bf16} REFDROP=${REFDROP:-1}
# S1_BUNDLE: start the stage-2 runs from this stage-1 bundle (carry it) and skip the encoder and stage 1,
# e.g. runs/h100-retrain-s6/stage1 (the sixth session's retrain, kept on the development machine).
S1_BUNDLE=${S1_BUNDLE:-}
# ORIENTATION, MAX_PRIMITIVES, OBJECT_SCALE: the procedural objects (iso3d.data.ObjectSampling): poses
# upright or any, 1..N primitives each, sizes and centres times the scale.
ORIENTATION=${ORIENTATION:-any} MAX_PRIMITIVES=${MAX_PRIMITIVES:-3} OBJECT_SCALE=${OBJECT_SCALE:-1.0}
# ENC_JITTER: the encoder's contrastive pairs colour-jittered at this strength (0.3 shipped; 0: off).
ENC_JITTER=${ENC_JITTER:-0}
# SNR_GAMMA: Min-SNR-γ loss weighting of the diffusion stages (e.g. 5; empty: the plain ε-MSE).
SNR_GAMMA=${SNR_GAMMA:-}
# WIDTH: iso3d-tiny's base width for a new model (UNet widths (w, 2w, 2w), embedding 2w; 32 is shipped).
WIDTH=${WIDTH:-32}
# PREDICTION: what a new model's UNet predicts: epsilon (shipped) or v_prediction, which ZTSNR=1 (the
# default with v) pairs with a zero-terminal-SNR schedule (model card, tenth session).
PREDICTION=${PREDICTION:-epsilon}
ZTSNR=${ZTSNR:-$([ "$PREDICTION" = v_prediction ] && echo 1 || echo 0)}
schedule="--prediction-type $PREDICTION $([ "$ZTSNR" = 1 ] && echo --zero-terminal-snr)"
# SAMPLING: the saved bundles' sampling defaults (train --guidance-scale ...), as the shipped config.json
# (the thirteenth session's run wrote SDS guidance 5; its SDS sweep then set 10).
SAMPLING=${SAMPLING:---guidance-scale 1.5 --sampling-eta 1 --sds-guidance-scale 10}
# S2_PLAIN=0: leave out plain stage 2 (no reference dropout), so the dropout run and the control
# share the GPU two ways, not three.
S2_PLAIN=${S2_PLAIN:-1}
common="--batch-size $BATCH --train-size $TRAIN_SIZE --cache-dir data/cache --checkpoint-every 1000000 --seed 0 --render-workers 16 --attention-backend $ATTN --mixed-precision $MP --orientation $ORIENTATION --max-primitives $MAX_PRIMITIVES --object-scale $OBJECT_SCALE ${SNR_GAMMA:+--snr-gamma $SNR_GAMMA}"
s2="--steps $S2_STEPS --lr $S2_LR --warmup-steps 50 --lr-schedule cosine --cosine-to-time-limit --ema-decay $EMA --time-limit $S2_LIMIT $SAMPLING $common"
[ "$TRAIN" = 1 ] && (
  export ISO3D_TRITON_AUTOTUNE=0  # a tiny model: the default tile is fine and compiles once
  # Render a missing data cache first, outside the stages' timeouts (16384 objects: about a minute on
  # 16 cores), and once, not in each of the stage-2 runs that start side by side.
  timeout 600 python3 -c "from iso3d.data import MultiViewDataset, ObjectSampling
MultiViewDataset('train', $TRAIN_SIZE, object_sampling=ObjectSampling(orientation='$ORIENTATION', max_primitives=$MAX_PRIMITIVES, scale=$OBJECT_SCALE), cache_dir='data/cache', workers=16, progress=False)" || exit 3
  echo "[$(( $(date +%s) - T0 ))s] data rendered" >> "$LOGS/summary.txt"
  if [ -z "$S1_BUNDLE" ]; then
    timeout $((ENC_LIMIT + 40)) python3 -m iso3d train encoder --out $R --encoder-steps $ENC_STEPS --encoder-lr 1e-3 --encoder-colour-jitter $ENC_JITTER --time-limit $ENC_LIMIT --width $WIDTH $schedule $common || exit 1
    timeout $((S1_LIMIT + 40)) python3 -m iso3d train stage1 --out $R --init $R/encoder/bundle --steps $S1_STEPS --lr $S1_LR \
      --warmup-steps 100 --lr-schedule cosine --cosine-to-time-limit --ema-decay $EMA --time-limit $S1_LIMIT $SAMPLING $common || exit 2
    S1_BUNDLE=$R/stage1/bundle
    tar czf "$OUT/stage1.tgz" -C $R/stage1 bundle  # now: a call cut off in stage 2 still returns it
    echo "[$(( $(date +%s) - T0 ))s] stage 1 done" >> "$LOGS/summary.txt"
  fi
  [ "$S2_PLAIN" = 1 ] && timeout $((S2_LIMIT + 40)) python3 -m iso3d train stage2 --out $R --init $S1_BUNDLE $s2 > "$LOGS/train_stage2.log" 2>&1 &
  [ "$REFDROP" = 1 ] && timeout $((S2_LIMIT + 40)) python3 -m iso3d train stage2 --out $D --init $S1_BUNDLE --reference-dropout $REF_DROP $s2 > "$LOGS/train_refdrop.log" 2>&1 &
  timeout $((S2_LIMIT + 40)) python3 -m iso3d train stage1 --out $C --init $S1_BUNDLE $s2 > "$LOGS/train_control.log" 2>&1 &
  wait
) > "$LOGS/train.log" 2>&1
TRAIN_RC=$?
[ "$TRAIN" = 1 ] && say "training rc=$TRAIN_RC $(grep -h 'steps, final loss' "$LOGS"/train*.log | tr '\n' ' ')"
[ -n "$TESTS_PID" ] && wait $TESTS_PID
[ -n "$TRACE_PID" ] && wait $TRACE_PID
[ -n "$TESTS" ] && say "tests: $(grep -E ' rc=|passed|failed|not run' "$LOGS/tests.log" | tr '\n' ' ')"
for d in $R/encoder $R/stage1 $R/stage2 $D/stage2 $C/stage1; do
  [ -f $d/log.jsonl ] && cp $d/log.jsonl "$LOGS/$(echo $d | tr '/' '_').log.jsonl"
  [ -f $d/result.json ] && cp $d/result.json "$LOGS/$(echo $d | tr '/' '_').result.json"
done
[ -d $R/stage1/bundle ] && tar czf "$OUT/stage1.tgz" -C $R/stage1 bundle
[ -d $R/stage2/bundle ] && tar czf "$OUT/stage2.tgz" -C $R/stage2 bundle
[ -d $D/stage2/bundle ] && tar czf "$OUT/refdrop.tgz" -C $D/stage2 bundle
[ -d $C/stage1/bundle ] && tar czf "$OUT/control.tgz" -C $C/stage1 bundle
tar czf "$OUT/logs.tgz" -C "$LOGS" .  # again at the end; this copy survives a run cut off in phase 3

# -- phase 3: benchmarks, alone on the GPU -------------------------------------------------------
bench() {  # name timeout pytest-args...
  local name=$1 limit=$2; shift 2
  timeout "$limit" python3 -m pytest "$@" -q -p no:cacheprovider --benchmark-only --bench-rounds "${BENCH_ROUNDS:-5}" \
    --benchmark-json "$LOGS/bench_$name.json" > "$LOGS/bench_$name.log" 2>&1
  say "bench $name rc=$?"
  tar czf "$OUT/logs.tgz" -C "$LOGS" .  # after each: a call cut off later keeps this one
}
wait $SELFTEST; say "selftest: $(tail -4 "$LOGS/selftest.log" | tr '\n' ' ')"
# The VAE-encode benchmark needs no nerfacc: it runs while nerfacc compiles (CPU), before the rest.
case " $BENCHES " in *" vae "*) bench vae "${VAE_LIMIT:-140}" benchmarks/models/bench_vae_encode.py ${VAE_K:+-k "$VAE_K"} ;; esac
[ "$NERFACC" = 1 ] && { wait $NERFACC_PID; say "nerfacc: $(tail -1 "$LOGS/nerfacc_build.log")"; }
# Keep nerfacc's build (~90 s of a lease) for a later call to carry: see NERFACC_BUILD above.
if [ "$NERFACC" = 0 ]; then
  :
elif [ -f "$EXT_DIR/nerfacc_cuda/nerfacc_cuda.so" ]; then
  [ -f "$OUT/nerfacc_build.tgz" ] || tar czf "$OUT/nerfacc_build.tgz" -C "$EXT_DIR" nerfacc_cuda
else
  say "no nerfacc build found in $EXT_DIR (not kept)"
fi
for b in $BENCHES; do
  case $b in
    mv_attention) bench mv_attention 80 benchmarks/kernels/bench_mv_attention.py ;;
    unet_step) bench unet_step 60 benchmarks/models/bench_unet_step.py -k "bf16" ;;
    sds) bench sds "${SDS_LIMIT:-110}" benchmarks/generate/bench_sds_step.py ${SDS_K:+-k "$SDS_K"} ;;
    hash_render) bench hash_render 45 benchmarks/kernels/bench_hash_grid.py benchmarks/nerf/bench_render.py ;;
    jacobian) bench jacobian "${JACOBIAN_LIMIT:-120}" benchmarks/kernels/bench_hash_grid.py -k "jacobian and 22" ;;
    mlp_head) bench mlp_head "${MLP_HEAD_LIMIT:-120}" benchmarks/kernels/bench_mlp_head.py ;;  # 45 s was too short (ninth session)
    group_norm) bench group_norm "${GROUP_NORM_LIMIT:-60}" benchmarks/kernels/bench_group_norm.py ;;
    density_head) bench density_head "${HEAD_LIMIT:-150}" benchmarks/generate/bench_sds_step.py -k "density_head ${HEAD_K:+and $HEAD_K}" ;;
    density_gradient) bench density_gradient "${GRADIENT_LIMIT:-90}" benchmarks/kernels/bench_density_gradient.py ${GRADIENT_K:+-k "$GRADIENT_K"} ;;
  esac
done
# BASE=folder (carried): an earlier commit's tree (git archive COMMIT | tar -x -C runs/base), whose
# BASE_BENCHES (the names above) run right after, on the same machine, for a before/after ratio.
BASE=${BASE:-}
if [ -n "$BASE" ]; then
  ln -sfn ../kernels "$BASE/iso3d/kernels"
  for b in ${BASE_BENCHES:-}; do
    case $b in
      field_state) (cd "$BASE" && export PYTHONPATH=/tmp/site:$PWD && bench base_field_state "${BASE_LIMIT:-90}" \
          benchmarks/generate/bench_sds_step.py -k "field_state and graphed ${BASE_K:+and $BASE_K}") ;;
      jacobian) (cd "$BASE" && export PYTHONPATH=/tmp/site:$PWD && bench base_jacobian "${JACOBIAN_LIMIT:-120}" benchmarks/kernels/bench_hash_grid.py \
          -k "jacobian and 22") ;;
      density_head) (cd "$BASE" && export PYTHONPATH=/tmp/site:$PWD && bench base_density_head "${HEAD_LIMIT:-150}" \
          benchmarks/generate/bench_sds_step.py -k "density_head ${HEAD_K:+and $HEAD_K}") ;;
      density_gradient) (cd "$BASE" && export PYTHONPATH=/tmp/site:$PWD && bench base_density_gradient "${GRADIENT_LIMIT:-90}" \
          benchmarks/kernels/bench_density_gradient.py ${GRADIENT_K:+-k "$GRADIENT_K"}) ;;
    esac
  done
fi

# PROFILE="stages" (e.g. "64 256"; empty: off): torch.profiler's breakdown of the optimized step on the
# blob and the surface field (benchmarks/generate/profile_sds_step.py): iso3d's ranges and top kernels.
PROFILE=${PROFILE:-}
if [ -n "$PROFILE" ]; then
  timeout "${PROFILE_LIMIT:-240}" python3 benchmarks/generate/profile_sds_step.py --stages $PROFILE --field-states ${PROFILE_STATES:-blob surface} ${PROFILE_HEAD:+--density-head $PROFILE_HEAD} ${PROFILE_VAE:+--vae $PROFILE_VAE} \
    --out "$LOGS/profile" > "$LOGS/profile.log" 2>&1
  say "profile rc=$? $(grep -h '^== ' "$LOGS/profile.log" | tr '\n' ' ')"
  tar czf "$OUT/logs.tgz" -C "$LOGS" .
fi

# TRAIN_PROFILE=1: where a training step of iso3d-tiny goes at batch $BATCH (parts by CUDA events, kernel
# launches per step, top kernels; benchmarks/models/profile_train_step.py). #5 needs more steps per
# minute: measure this before a long training run (about 40 s).
TRAIN_PROFILE=${TRAIN_PROFILE:-0}
if [ "$TRAIN_PROFILE" = 1 ]; then
  timeout "${TRAIN_PROFILE_LIMIT:-180}" python3 benchmarks/models/profile_train_step.py --batch "$BATCH" --width "$WIDTH" \
    --out "$LOGS/train_profile" > "$LOGS/train_profile.log" 2>&1
  say "train profile rc=$? $(grep -h -E '^step |launches' "$LOGS/train_profile.log" | tr '\n' ' ')"
  tar czf "$OUT/logs.tgz" -C "$LOGS" .
fi

# TRACE=seconds (0: off): a real SDS trajectory on the official field, renderer and schedule (the GPU
# defaults of iso3d generate) with the shipped iso3d-tiny as guidance, stopped by SIGINT after that
# many seconds; its checkpoint keeps the samples per ray and wall time of every step. A proxy for how
# soon an official run's field sharpens (the toy model's guidance, not the release's), to weigh the
# blob / surface bracket of RESULTS.md. (The eighth session's trace ran the guidance in fp32; since the
# seventeenth, generate's GPU default is bf16, GenerateConfig.model_dtype: TRACE_DTYPE=fp32 repeats it.)
[ "$TRACE" -gt 0 ] && [ "$TRACE_WITH_TESTS" = 0 ] && run_trace

tar czf "$OUT/logs.tgz" -C "$LOGS" .
grep -h -A200 "iso3d side-by-side" "$LOGS"/bench_*.log | grep -v "^$" | cut -c1-150 | tail -80
say "done"
