"""One SDS step end to end (render 4 views + UNet with CFG + backward + optimizer): optimized vs naive.

* ``optimized``: Triton joint attention, Triton hash grid, nerfacc occupancy-grid sampling (grid
  updated 16 times on the initial blob, as after the first steps of a run).
* ``naive``: materialized fp32-score attention (MVDream's fallback), the PyTorch hash-grid twin,
  dense sampling of all 512 slots per ray, no pruning.
* ablations: the optimized path with one part made naive (``naive_attention``, ``torch_hash_grid``,
  ``dense_sampling``, ``unpruned``: no α < 0.01 / T < 1e-4 pruning), to see which part pays;
  ``central_normals`` / ``forward_normals``: the optimized path with central- or forward-difference
  normals instead of analytic ones (the hash grid's Jacobian, the default since 2026-11-26);
  ``cuda_graph``: the optimized path with the UNet's CFG forward replayed from a CUDA graph
  (``GenerateConfig.cuda_graph``); ``cuda_graph_sdpa_attention``: the same with PyTorch's SDPA on the
  concatenated views instead of the Triton attention kernel that ``"auto"`` picks on CUDA
  (``kernels.mv_attention.auto_order``; RESULTS.md, eighteenth session: 1.11x for the kernel at 256² in one A/B, no difference across two other runs).
* ``test_sds_step_field_state``: the optimized step on the initial blob (what every other case
  times: a soft ball whose samples are never pruned, so a pessimistic stand-in for a whole run) and on
  a sharp-surfaced ball like a field a few hundred steps into a run (``FIELD_STATES``), so that a
  full-run estimate can be bracketed.
* ``test_sds_step_vae_options``: the fastest step so far (sharp-surfaced field, CUDA-graphed UNet)
  with the VAE encode sped up (``iso3d.models.latent_encoder``: cuDNN autotuning, channels-last,
  ``torch.compile``, the fused GroupNorm → SiLU with and without channels-last), to see whether what ``benchmarks/models/bench_vae_encode.py`` saves survives in
  a whole step.
* ``test_sds_step_phases``: the optimized step's parts timed alone (render + its backward with each
  kind of normals, VAE encode + its backward eagerly and through ``torch.compile``, the UNet's CFG
  forward eagerly and from a CUDA graph), to see where the time goes.

On a GPU: the official model at random weights (speed does not depend on values; ~1.6 B parameters
with the VAE and ViT-H), bf16, the official field and renderer, both SDS stages: 64² renders of
2×4 views resized to 256² for the VAE, and 256² renders of 4 views. The full-run estimate printed
in RESULTS.md is ``5000·t(64²) + 5000·t(256²)``, the release's 10,000 steps.
On CPU: the iso3d-tiny model and :meth:`GenerateConfig.cpu_tiny` (the official size takes minutes
per step on 2 cores), fp32, renders at the model's 32².
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")

from iso3d.cameras import camera_embedding, generate_rays, sample_sds_views  # noqa: E402
from iso3d.generation import GenerateConfig, sds_step  # noqa: E402
from iso3d.models.bundle import BundleConfig, MultiViewDiffusion  # noqa: E402
from iso3d.models.cuda_graph import CUDAGraphedForward  # noqa: E402
from iso3d.models.latent_encoder import cudnn_autotune, latent_encoder  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402
from iso3d.nerf import ImplicitVolume, VolumeRenderer  # noqa: E402

PROVIDERS = {  # name: (attention backend, hash-grid backend, sampler, α/T pruning)
    "optimized": ("auto", "triton", "nerfacc", True),
    "central_normals": ("auto", "triton", "nerfacc", True),  # + central-difference normals (6 extra evaluations)
    "forward_normals": ("auto", "triton", "nerfacc", True),  # + forward-difference normals (3 extra evaluations)
    "cuda_graph": ("auto", "triton", "nerfacc", True),  # + the UNet's CFG forward replayed from a CUDA graph
    # cuda_graph with SDPA on the concatenated views (the attention twin) instead of the Triton kernel
    "cuda_graph_sdpa_attention": ("torch", "triton", "nerfacc", True),
    "unpruned": ("auto", "triton", "nerfacc", False),
    "naive_attention": ("naive", "triton", "nerfacc", True),
    "torch_hash_grid": ("auto", "torch", "nerfacc", True),
    "dense_sampling": ("auto", "triton", "dense", True),
    "naive": ("naive", "torch", "dense", False),
}
BASELINE = "optimized"  # the naive path does not fit a 141 GB GPU at the official size
NORMALS = {"central_normals": "finite_difference", "forward_normals": "forward_difference"}  # else the config's


def build_model(device: torch.device, smoke: bool) -> MultiViewDiffusion:
    """The official model at random weights in bf16 on a GPU; iso3d-tiny's architecture on CPU (or --smoke)."""
    if device.type == "cuda" and not smoke:
        with torch.device(device):  # random init on the GPU: seconds instead of a minute
            m = MultiViewDiffusion(BundleConfig.official(), seed=0)
        return m.to(torch.bfloat16).eval()
    size = 16 if smoke else 32
    return MultiViewDiffusion(tiny_bundle_config(image_size=size, width=16 if smoke else 32), seed=0).to(device).eval()


@pytest.fixture(scope="module")
def model(bench_device, request):
    return build_model(bench_device, request.config.getoption("--smoke"))


def _config(bench_device, smoke, stage: int) -> GenerateConfig:
    if bench_device.type == "cuda" and not smoke:
        cfg = GenerateConfig.official()
        # Pin the milestone under test at step 0 (64²: 2 objects × 4 views; 256²: 1 × 4).
        return dataclasses.replace(cfg, milestones=((0, 64, 2),) if stage == 64 else ((0, 256, 1),))
    cfg = GenerateConfig.cpu_tiny(steps=100)
    if smoke:
        cfg = dataclasses.replace(cfg, renderer=dataclasses.replace(cfg.renderer, num_samples_per_ray=16))
    return dataclasses.replace(cfg, milestones=((0, None, 2 if stage == 64 else 1),))


# (λ, r) of the density bias softplus(raw + λ(1 − ‖x‖/r)): the release's initial blob, and a ball of
# about the same extent whose density rises to 25 within 0.06 of its surface and to 200 at its centre,
# so that transmittance falls below 1e-4 about 0.2 inside it and the samples behind are pruned
# (test_sds_step_field_state records how many samples each state leaves; RESULTS.md).
FIELD_STATES = {"blob": (10.0, 0.5), "surface": (200.0, 0.5)}


def _setup(model, cfg, bench_device, provider, normal_type=None, field_state="blob", prune=None, build_grid=None,
           density_head=None):
    """The provider's config, field (``FIELD_STATES[field_state]``, by default the initial blob) and
    renderer (with nerfacc's sampler, or ``build_grid``: the occupancy grid updated 16 times).

    ``normal_type`` (a ``FieldConfig.normal_type``) also turns normals on; None: the provider's.
    ``prune``: α/T pruning on or off; None: the provider's. ``density_head``: how analytic normals run,
    ``"fused"`` (one op: ``FieldConfig.analytic_normals_impl="fused"``, the default) or the separate ops
    with the density head on ``"triton"`` or ``"torch"``; None: the config's (fused)."""
    backend_attn, backend_grid, sampler, provider_prune = PROVIDERS[provider]
    prune = provider_prune if prune is None else prune
    build_grid = sampler == "nerfacc" if build_grid is None else build_grid
    renderer_cfg = dataclasses.replace(cfg.renderer, sampler=sampler)
    if not prune:
        renderer_cfg = dataclasses.replace(renderer_cfg, prune_alpha_threshold=0.0, early_stop_eps=0.0)
    normal_type = normal_type or NORMALS.get(provider)
    if normal_type is not None:
        cfg = dataclasses.replace(cfg, normals=True, field=dataclasses.replace(cfg.field, normal_type=normal_type))
    blob_density, blob_radius = FIELD_STATES[field_state]
    head = {} if density_head is None else (dict(analytic_normals_impl="fused") if density_head == "fused" else
                                            dict(analytic_normals_impl="separate", density_head_backend=density_head))
    cfg = dataclasses.replace(cfg, field=dataclasses.replace(cfg.field, backend=backend_grid, blob_density=blob_density,
                                                             blob_radius=blob_radius, **head),
                              renderer=renderer_cfg)
    model.unet.backend = backend_attn
    model.unet.install_processors()
    torch.manual_seed(0)
    fld = ImplicitVolume(cfg.field, seed=0).to(bench_device)
    renderer = VolumeRenderer(cfg.renderer).to(bench_device)
    if build_grid:
        for step in range(16):
            renderer.update_occupancy(fld, step, every=1)
    return cfg, fld, renderer


class _Mark:
    """A point in a step's timeline: a CUDA event on a GPU (stream order, so the backward's kernels
    count too, though autograd launches them from its own thread), a host clock on the CPU."""

    def __init__(self, device: torch.device):
        self.event = torch.cuda.Event(enable_timing=True) if device.type == "cuda" else None
        self.time = 0.0

    def record(self):
        if self.event is not None:
            self.event.record()
        else:
            self.time = time.perf_counter()

    def ms_until(self, later: "_Mark") -> float:  # after a synchronize
        return self.event.elapsed_time(later.event) if self.event is not None else (later.time - self.time) * 1e3


def _training_step(model, cfg, fld, renderer, bench_device, unet=None, encode=None, stats=None, phases=None):
    """One whole SDS step as a run takes it: loss (step 0's schedule), backward, AdamW update.

    ``stats`` (a dict) receives ``sds_step``'s sample counts; ``phases`` (a list) receives, per call,
    the four :class:`_Mark` s around the forward, the backward and the optimizer step.
    """
    optim = torch.optim.AdamW(fld.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-15)
    token = torch.randn(1, 1, model.config.unet.cross_attention_dim, device=bench_device)
    acp = model.config.scheduler.alphas_cumprod(bench_device)
    gen = torch.Generator().manual_seed(0)

    def step():
        marks = [_Mark(bench_device) for _ in range(4)] if phases is not None else []

        def mark(i: int):
            if marks:
                marks[i].record()

        mark(0)
        loss = sds_step(model, fld, renderer, token, acp, cfg, 0, gen, unet=unet, encode=encode, stats=stats)
        mark(1)
        with torch.profiler.record_function("backward"):
            optim.zero_grad(set_to_none=True)
            loss.backward()
        mark(2)
        with torch.profiler.record_function("optimizer"):
            optim.step()
        mark(3)
        if marks:
            phases.append(marks)

    return step


def _fail_if_eager(unet):
    """A graphed case whose capture failed timed eager calls: fail it rather than report those."""
    if unet is not None and unet.disabled_reason:
        pytest.fail(f"cuda_graph: the capture failed and the step ran eagerly: {unet.disabled_reason}")


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("stage", [64, 256])
def test_sds_step(run_bench, bench_device, smoke, model, stage, provider):
    on_gpu = bench_device.type == "cuda"
    if provider != "naive" and not on_gpu:
        pytest.skip(f"{provider}: Triton runs only in its interpreter on CPU and nerfacc's sampler needs CUDA")
    backend_attn, backend_grid, sampler, prune = PROVIDERS[provider]
    cfg, fld, renderer = _setup(model, _config(bench_device, smoke, stage), bench_device, provider)
    unet = CUDAGraphedForward(model.unet) if provider.startswith("cuda_graph") else None
    step = _training_step(model, cfg, fld, renderer, bench_device, unet)

    size, batch = cfg.milestones[0][1] or model.config.image_size, cfg.milestones[0][2]
    frames = batch * cfg.views.n_views
    label = "official bf16" if on_gpu and not smoke else "tiny fp32"
    try:
        run_bench(step, group=f"sds step {label} {frames} views {size}^2 render", provider=provider,
                  baseline=BASELINE, work=1, unit="steps/s", max_rounds=3 if sampler == "dense" else None,
                  extra=dict(model=label, render_size=size, views=frames, samples_per_ray=cfg.renderer.num_samples_per_ray,
                             hash_levels=cfg.field.encoding.n_levels, attention=backend_attn, hash_grid=backend_grid,
                             sampler=sampler, pruning=prune, cuda_graph=unet is not None))
        _fail_if_eager(unet)
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        pytest.skip(f"{provider} at {size}^2: out of GPU memory ({str(exc).splitlines()[0]})")


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
@pytest.mark.parametrize("field_state", list(FIELD_STATES))
@pytest.mark.parametrize("stage", [64, 256])
def test_sds_step_field_state(run_bench, bench_device, smoke, model, stage, field_state, graphed):
    """The optimized step on the initial blob vs a sharp surface, with the UNet's CFG forward eager or
    from a CUDA graph (GPU only). On CPU: the tiny model with the PyTorch hash grid and the dense
    sampler, with the occupancy grid and pruning, at the release's 512 samples per ray (16 in the
    smoke run), so that the sample counts show what pruning leaves."""
    _field_state_case(run_bench, bench_device, smoke, model, stage, field_state, graphed, density_head=None)


# The VAE encode of the density-head cases: as generate runs it (NCHW, PyTorch's norms), or channels-last
# with the fused GroupNorm → SiLU (iso3d.models.fused_norm). Ids avoid "fused": -k fused picks the head.
DENSITY_HEAD_VAES = {"vae_nchw": dict(), "vae_nhwc_gn": dict(channels_last=True, fused_group_norm=True)}


@pytest.mark.parametrize("vae", list(DENSITY_HEAD_VAES))
@pytest.mark.parametrize("density_head", ["fused", "triton", "torch"])
@pytest.mark.parametrize("field_state", list(FIELD_STATES))
@pytest.mark.parametrize("stage", [64, 256])
def test_sds_step_density_head(run_bench, bench_device, smoke, model, stage, field_state, density_head, vae):
    """The fastest step (graphed UNet) with analytic normals through the fused op (hash grid + density
    MLP + ∂raw/∂x: ``fused``), or through the separate ops with the density head (the MLP and its input
    gradient) as its Triton kernel (``triton``) or its PyTorch twin (``torch``, the baseline) (GPU only).
    ``vae_nhwc_gn``: the same with the VAE encode channels-last and its norms fused (provider suffix
    ``_vae_nhwc_gn``, so ``estimate_run.py`` gives it a row of its own)."""
    if bench_device.type != "cuda":
        pytest.skip("the fused density head runs only in Triton's interpreter on CPU, and CUDA graphs need a GPU")
    with _vae_encode(model, **DENSITY_HEAD_VAES[vae]) as encode:
        _field_state_case(run_bench, bench_device, smoke, model, stage, field_state, True, density_head=density_head,
                          encode=encode, suffix="" if vae == "vae_nchw" else f"_{vae}")


def _field_state_case(run_bench, bench_device, smoke, model, stage, field_state, graphed, density_head, encode=None,
                      suffix=""):
    on_gpu = bench_device.type == "cuda"
    if graphed and not on_gpu:
        pytest.skip("CUDA graphs need a GPU")
    cfg = _config(bench_device, smoke, stage)
    if not on_gpu and not smoke:
        cfg = dataclasses.replace(cfg, renderer=dataclasses.replace(cfg.renderer, num_samples_per_ray=512))
    cfg, fld, renderer = _setup(model, cfg, bench_device, "optimized" if on_gpu else "naive", field_state=field_state,
                                prune=True, build_grid=True, density_head=density_head)
    unet = CUDAGraphedForward(model.unet) if graphed else None
    step = _training_step(model, cfg, fld, renderer, bench_device, unet, encode)
    samples = []
    with torch.no_grad():  # how many samples the field is evaluated at (after the grid and pruning)
        views = sample_sds_views(cfg.views, batch=cfg.milestones[0][2], generator=torch.Generator().manual_seed(0))
        size = cfg.milestones[0][1] or model.config.image_size
        rays_o, rays_d = generate_rays(views.c2w.to(bench_device), views.fovy.to(bench_device), size, size)
        probe = renderer.eval()(fld, rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
        samples += [probe.n_samples, probe.n_marched]
    frames = cfg.milestones[0][2] * cfg.views.n_views
    label = "official bf16" if bench_device.type == "cuda" and not smoke else "tiny fp32"
    try:
        provider = f"{field_state}_graphed" if graphed else field_state
        group = f"sds step field state {label} {frames} views {size}^2 render"
        if density_head is not None:
            provider, group = f"{field_state}_{density_head}_head{suffix}", f"sds step density head {label} {frames} views {size}^2 render"
        run_bench(step, group=group, provider=provider,
                  baseline="blob_torch_head" if density_head else "blob", work=1, unit="steps/s",
                  max_rounds=None if on_gpu else 3,
                  extra=dict(model=label, render_size=size, views=frames, field_state=field_state, cuda_graph=graphed,
                             density_bias=FIELD_STATES[field_state], samples_evaluated=samples[0],
                             analytic_normals=fld.config.analytic_normals_impl, density_head=density_head or "auto",
                             samples_per_ray=cfg.renderer.num_samples_per_ray,
                             samples_marched=samples[1],
                             note=f"{samples[0]} samples evaluated ({samples[0] / rays_o[..., 0].numel():.1f} per ray) "
                                  f"of {samples[1]} marched ({samples[1] / rays_o[..., 0].numel():.1f})"))
        _fail_if_eager(unet)
    except torch.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        pytest.skip(f"field state {field_state} at {size}^2: out of GPU memory ({str(exc).splitlines()[0]})")


# render phases: the config's normals (analytic on GPU, none in the CPU config), or these
PHASE_NORMALS = {"render_central_normals": "finite_difference", "render_forward_normals": "forward_difference",
                 "render_analytic_normals": "analytic"}
PHASES = ("step", "render", *PHASE_NORMALS, "vae_encode", "vae_encode_compiled", "unet_cfg", "unet_cfg_graphed")


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("stage", [64, 256])
def test_sds_step_phases(run_bench, bench_device, smoke, model, stage, phase):
    """Where an optimized step's time goes: each part alone, forward and (where it has one) backward."""
    # On CPU (tiny model) every part still runs, so this code is checked without a GPU.
    provider = "optimized" if bench_device.type == "cuda" else "naive"  # CPU: the tiny naive path
    if phase == "vae_encode_compiled" and model.vae is None:
        pytest.skip("vae_encode_compiled: this model has no VAE (iso3d-tiny is pixel space), nothing to compile")
    cfg, fld, renderer = _setup(model, _config(bench_device, smoke, stage), bench_device, provider,
                                normal_type=PHASE_NORMALS.get(phase))
    size, batch = cfg.milestones[0][1] or model.config.image_size, cfg.milestones[0][2]
    frames = batch * cfg.views.n_views
    gen = torch.Generator().manual_seed(0)
    token = torch.randn(1, 1, model.config.unet.cross_attention_dim, device=bench_device)
    acp = model.config.scheduler.alphas_cumprod(bench_device)
    views = sample_sds_views(cfg.views, batch=batch, generator=gen)
    rays_o, rays_d = generate_rays(views.c2w.to(bench_device), views.fovy.to(bench_device), size, size)
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    image = torch.rand(frames, 3, model.config.image_size, model.config.image_size, device=bench_device,
                       requires_grad=True)
    z = model.encode_images(image.detach()).float()
    cams = camera_embedding(views.elevation, views.azimuth, convention=model.config.camera_convention).to(bench_device)

    def render():
        out = renderer.train()(fld, rays_o, rays_d, with_normals=cfg.normals, generator=gen)
        (out.rgb.sum() + out.orientation_loss).backward()

    # vae_encode_compiled: the same call through torch.compile (inductor fuses the VAE's GroupNorm +
    # SiLU pairs; the encode is not launch-bound, so a CUDA graph would not pay). The compilation
    # happens in the first (memory-measuring) call, before the timed rounds, so that call's peak may
    # include the compiler's own allocations.
    encode = torch.compile(model.encode_images, dynamic=False) if phase == "vae_encode_compiled" else model.encode_images

    def vae_encode():
        encode(image).float().sum().backward()

    # unet_cfg_graphed: a CUDA graph on a GPU; on the CPU the wrapper passes the call through
    graphed = CUDAGraphedForward(model.unet) if phase == "unet_cfg_graphed" else None
    unet = graphed if graphed is not None else model.unet

    @torch.no_grad()
    def unet_cfg():
        context = torch.cat([token.expand(frames, -1, -1), torch.zeros_like(token).expand(frames, -1, -1)])
        unet(torch.cat([z, z]), torch.full((2 * frames,), 500, device=bench_device), context,
             torch.cat([cams, cams]), n_views=cfg.views.n_views)

    def step():
        sds_step(model, fld, renderer, token, acp, cfg, 0, gen).backward()

    fn = {"step": step, "vae_encode": vae_encode, "vae_encode_compiled": vae_encode, "unet_cfg": unet_cfg,
          "unet_cfg_graphed": unet_cfg}.get(phase, render)
    label = "official bf16" if bench_device.type == "cuda" and not smoke else "tiny fp32"
    run_bench(fn, group=f"sds step phases {label} {frames} views {size}^2 render", provider=phase, baseline="step",
              work=1, unit="calls/s", extra=dict(model=label, render_size=size, views=frames, phase=phase,
                                                  samples_per_ray=cfg.renderer.num_samples_per_ray,
                                                  normals=cfg.field.normal_type if cfg.normals else "off"))
    if graphed is not None and bench_device.type == "cuda" and (graphed.disabled_reason or not graphed.replays):
        pytest.fail(f"unet_cfg_graphed timed eager calls: {graphed.disabled_reason or 'no replay'}")


@contextlib.contextmanager
def _vae_encode(model, *, channels_last=False, compile=False, fused_group_norm=False):
    """The VAE encode with ``latent_encoder``'s options; the model's VAE is as it was afterwards (the
    fused norms are swapped into a copy, and the layout is set back)."""
    plain_vae = model.vae
    if fused_group_norm and plain_vae is not None:
        model.vae = copy.deepcopy(plain_vae)
    try:
        yield latent_encoder(model, channels_last=channels_last, compile=compile, fused_group_norm=fused_group_norm)
    finally:
        model.vae = plain_vae
        if channels_last and plain_vae is not None:
            plain_vae.to(memory_format=torch.contiguous_format)


# (channels_last, cudnn_benchmark, compile, fused_group_norm) of the VAE encode (iso3d.models.latent_encoder)
STEP_VAE_OPTIONS = {"plain": (False, False, False, False), "cudnn_benchmark": (False, True, False, False),
                    "channels_last_cudnn_benchmark": (True, True, False, False), "compiled_vae": (False, False, True, False),
                    "fused_norm_vae": (False, False, False, True), "channels_last_fused_norm_vae": (True, False, False, True)}


@pytest.mark.parametrize("option", list(STEP_VAE_OPTIONS))
@pytest.mark.parametrize("stage", [64, 256])
def test_sds_step_vae_options(run_bench, bench_device, smoke, model, stage, option):
    """The surface-field step with the graphed UNet (GPU) and the VAE encode made faster, vs ``plain``.
    On CPU the tiny model has no VAE: the options run as no-ops (the code path is checked, not timed)."""
    on_gpu = bench_device.type == "cuda"
    channels_last, cudnn_benchmark, compile, fused = STEP_VAE_OPTIONS[option]
    if compile and not on_gpu:
        pytest.skip("compiled_vae: inductor takes about a minute on 2 CPU cores, and the CPU model has no VAE")
    cfg, fld, renderer = _setup(model, _config(bench_device, smoke, stage), bench_device,
                                "optimized" if on_gpu else "naive", field_state="surface", prune=True, build_grid=True)
    unet = CUDAGraphedForward(model.unet) if on_gpu else None
    size, batch = cfg.milestones[0][1] or model.config.image_size, cfg.milestones[0][2]
    label = "official bf16" if on_gpu and not smoke else "tiny fp32"
    with _vae_encode(model, channels_last=channels_last, compile=compile, fused_group_norm=fused) as encode, \
            cudnn_autotune(cudnn_benchmark):
        step = _training_step(model, cfg, fld, renderer, bench_device, unet, encode)
        start = time.perf_counter()
        step()  # compiles / searches algorithms for this shape; a run pays it once per milestone
        if on_gpu:
            torch.cuda.synchronize(bench_device)
        first = time.perf_counter() - start
        run_bench(step, group=f"sds step vae options {label} {batch * cfg.views.n_views} views {size}^2 render",
                  provider=option, baseline="plain", work=1, unit="steps/s", max_rounds=None if on_gpu else 3,
                  extra=dict(model=label, render_size=size, field_state="surface", cuda_graph=unet is not None,
                             vae_channels_last=channels_last, cudnn_benchmark=cudnn_benchmark, compiled_vae=compile,
                             fused_norm_vae=fused, first_call_s=round(first, 3)))
        _fail_if_eager(unet)
