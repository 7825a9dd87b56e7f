"""generate(): a short SDS run at tiny settings end to end, exact resume, NaN stop, outputs on disk."""

import dataclasses
import math

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")

from iso3d.generation import GenerateConfig, generate  # noqa: E402
from iso3d.kernels.hash_grid import HashGridConfig  # noqa: E402
from iso3d.models.bundle import MultiViewDiffusion  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402
from iso3d.nerf import FieldConfig, RendererConfig  # noqa: E402

EXAMPLE = "examples/red_ball.png"


def _config(steps):
    base = GenerateConfig.cpu_tiny(steps=steps)
    return dataclasses.replace(
        base, field=FieldConfig(encoding=HashGridConfig(n_levels=4, log2_hashmap_size=12), hidden_dims=16),
        renderer=RendererConfig(num_samples_per_ray=24), checkpoint_every=3, grid_update_every=2)


@pytest.fixture(scope="module")
def model():
    return MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)


def test_short_run_writes_every_output(model, tmp_path):
    asset = generate(EXAMPLE, model, config=_config(4), seed=0, out=tmp_path, progress=False)
    assert asset.run["steps"] == 4 and len(asset.run["losses"]) == 4
    assert all(map(lambda v: v == v, asset.run["losses"]))  # finite
    for name in ("field.pt", "turntable.gif", "views.png", "run.json", "checkpoint.pt"):
        assert (tmp_path / name).exists(), name
    import importlib.util
    import json

    run = json.loads((tmp_path / "run.json").read_text())
    if importlib.util.find_spec("imageio_ffmpeg"):
        assert run["turntable_mp4"] == "written" and (tmp_path / "turntable.mp4").stat().st_size > 0
    else:
        assert run["turntable_mp4"].startswith("skipped: imageio-ffmpeg is not installed")
    assert run["steps"] == 4 and run["versions"]["torch"] == torch.__version__
    # Per-step records: positive wall times, and samples per ray no more than the renderer's slots.
    assert len(run["step_seconds"]) == len(run["samples_per_ray"]) == 4
    assert all(t > 0 for t in run["step_seconds"]) and sum(run["step_seconds"]) <= run["seconds"]
    assert all(0 < n <= asset.config.renderer.num_samples_per_ray for n in run["samples_per_ray"])
    # pruning only removes samples from those the grid marched
    assert len(run["marched_per_ray"]) == 4
    assert all(k <= m <= asset.config.renderer.num_samples_per_ray for k, m in zip(run["samples_per_ray"], run["marched_per_ray"]))
    # The CPU config meshes the silhouettes' hull in the box of the silhouette-matched level: the
    # blob-initialized field (density up to ~softplus(10)) renders as a ball, so there is a surface, in
    # the box of the level run.json records.
    assert asset.config.mesh_threshold == "silhouette" and asset.config.mesh_surface == "hull"
    assert run["mesh"]["faces"] > 0 and run["mesh"]["threshold"] == pytest.approx(asset.surface_threshold)
    assert 0 < asset.surface_threshold < 25
    for ext in ("glb", "obj", "ply"):
        assert (tmp_path / f"mesh.{ext}").stat().st_size > 0
    assert run["mesh"]["surface"] == asset.config.mesh_surface
    # The other surfaces of the same field: run.json says which, and each mesh is closed.
    import trimesh

    from iso3d.export import MESH_SURFACES

    for other in set(MESH_SURFACES) - {asset.config.mesh_surface}:
        asset.config = dataclasses.replace(asset.config, mesh_surface=other)
        again = json.loads((asset.save(tmp_path / other) / "run.json").read_text())
        assert again["mesh"]["surface"] == other and again["mesh"]["faces"] > 0
        assert trimesh.load(tmp_path / other / "mesh.ply").is_watertight, other


@pytest.mark.parametrize("how", ["signal", "exception"])
def test_ctrl_c_saves_and_resume_continues_exactly(model, tmp_path, monkeypatch, how):
    import signal

    import iso3d.generation as g

    straight = generate(EXAMPLE, model, config=_config(6), seed=1, progress=False)
    real_step = g.sds_step

    def interrupted(*args, **kwargs):
        if args[6] == 3:  # the step argument: Ctrl-C arrives during the fourth step (index 3)
            if how == "exception":  # as Python raises it when no handler defers it: the step is lost
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C: the step finishes, with its records
        return real_step(*args, **kwargs)

    monkeypatch.setattr(g, "sds_step", interrupted)
    kept = 4 if how == "signal" else 3
    with pytest.raises(KeyboardInterrupt, match=f"interrupted after step {kept} of 6; its checkpoint is "):
        generate(EXAMPLE, model, config=_config(6), seed=1, out=tmp_path, progress=False)
    monkeypatch.setattr(g, "sds_step", real_step)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert saved["step"] == kept and len(saved["losses"]) == len(saved["samples_per_ray"]) == kept
    resumed = generate(EXAMPLE, model, config=_config(6), seed=1, out=tmp_path, resume=True, progress=False)
    assert resumed.run["losses"] == straight.run["losses"]
    assert resumed.run["samples_per_ray"] == straight.run["samples_per_ray"]  # the records survive the resume
    assert resumed.run["marched_per_ray"] == straight.run["marched_per_ray"]
    assert len(resumed.run["step_seconds"]) == 6
    for (name, a), b in zip(straight.field.state_dict().items(), resumed.field.state_dict().values()):
        assert torch.equal(a, b), name


def test_ctrl_c_right_after_a_checkpoint_does_not_write_it_again(model, tmp_path, monkeypatch):
    import signal

    import iso3d.generation as g
    from iso3d.utils.checkpoint import CheckpointWriter

    real_step, real_save, written = g.sds_step, CheckpointWriter.save, []

    def interrupted(*args, **kwargs):
        if args[6] == 2:  # during the third step, whose end is a checkpoint (checkpoint_every=3)
            signal.raise_signal(signal.SIGINT)
        return real_step(*args, **kwargs)

    def counting_save(self, state, **kwargs):
        written.append(state["step"])
        return real_save(self, state, **kwargs)

    monkeypatch.setattr(g, "sds_step", interrupted)
    monkeypatch.setattr(CheckpointWriter, "save", counting_save)
    with pytest.raises(KeyboardInterrupt, match="interrupted after step 3 of 6"):
        generate(EXAMPLE, model, config=_config(6), seed=1, out=tmp_path, progress=False)
    assert written == [3]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 3  # on disk before the raise


def test_cli_ctrl_c_exits_130_and_says_how_to_resume(model, tmp_path, monkeypatch, capsys):
    import signal

    import iso3d.generation as g
    from iso3d.cli import main

    real_generate, real_step = g.generate, g.sds_step

    def small_generate(image, _model, *, seed, out, resume, **_cli_options):  # the CLI's call, on this test's model
        return real_generate(image, model, config=_config(6), seed=seed, out=out, resume=resume, progress=False)

    def interrupted(*args, **kwargs):
        if args[6] == 1:
            signal.raise_signal(signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(g, "generate", small_generate)
    monkeypatch.setattr(g, "sds_step", interrupted)
    out = tmp_path / "run"
    assert main(["generate", EXAMPLE, "-o", str(out), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert f"interrupted after step 2 of 6; its checkpoint is {out / 'checkpoint.pt'}" in err
    assert "the same command with --resume" in err and "Traceback" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2


def test_nan_loss_stops_and_keeps_the_checkpoint(model, tmp_path, monkeypatch):
    generate(EXAMPLE, model, config=_config(3), seed=2, out=tmp_path, progress=False)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    real = model.unet.forward

    def broken(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(model.unet, "forward", broken)
    updates = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: updates.append(1) or real_step(self, *a, **k))
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        generate(EXAMPLE, model, config=_config(6), seed=2, out=tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    assert updates == []  # the bad step's gradients never reached the field


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="steps must be >= 1"):
        generate(EXAMPLE, model, steps=0)
    for bad in (0.0, -1.0, "auto", True, None):
        with pytest.raises(ValueError, match="mesh_threshold must be a positive density or 'silhouette'"):
            GenerateConfig(mesh_threshold=bad)
    with pytest.raises(ValueError, match=r"normals must be one of \['analytic', 'central', 'forward'\], 'off' or None"):
        generate(EXAMPLE, model, normals="sideways")
    with pytest.raises(ValueError, match="reference_loss_weight must be >= 0"):
        GenerateConfig(reference_loss_weight=-1.0)
    with pytest.raises(ValueError, match=r"mesh_surface must be one of \('density', 'rendered', 'hull'\), got 'depth'"):
        generate(EXAMPLE, model, mesh_surface="depth")
    with pytest.raises(ValueError, match="reference_pose must be"):
        GenerateConfig(reference_pose=(0.0, 0.0))
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint.pt"):
        generate(EXAMPLE, model, config=_config(2), out=tmp_path / "none", resume=True)
    with pytest.raises(FileNotFoundError, match="no such file"):
        generate(tmp_path / "missing.png", model, config=_config(2))


def test_generate_cli(tmp_path):
    import subprocess
    import sys

    # No --model: the shipped iso3d-tiny.
    result = subprocess.run([sys.executable, "-m", "iso3d", "generate", EXAMPLE, "-o", str(tmp_path / "out"),
                             "--steps", "2", "--device", "cpu", "--normals", "analytic", "--no-cuda-graph",
                             "--compile-vae", "--no-fused-vae-norms", "--dtype", "bf16"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "turntable.gif").exists() and (tmp_path / "out" / "run.json").exists()
    import json

    config = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    assert config["normals"] is True and config["field"]["normal_type"] == "analytic"
    assert config["cuda_graph"] is False and config["compile_vae"] is True and config["model_dtype"] == "bfloat16"
    assert config["fused_vae_norms"] is False

    # Re-export the saved asset: another surface at the matched level; the release's 25, which a 2-step
    # field does not reach, fails with exit code 1 and says how to get a mesh, keeping the rest.
    from iso3d.cli import main

    assert main(["export", str(tmp_path / "out"), "-o", str(tmp_path / "density"), "--mesh-surface", "density",
                 "--mesh-threshold", "silhouette", "--device", "cpu"]) == 0
    run = json.loads((tmp_path / "density" / "run.json").read_text())
    assert run["mesh"]["surface"] == "density" and run["mesh"]["faces"] > 0
    assert run["exported_from"] == str(tmp_path / "out") and run["steps"] == 2
    assert main(["export", str(tmp_path / "out"), "-o", str(tmp_path / "at25"), "--mesh-surface", "density",
                 "--mesh-threshold", "25"]) == 1
    assert "no density above the threshold 25" in json.loads((tmp_path / "at25" / "run.json").read_text())["mesh"]["error"]
    assert (tmp_path / "at25" / "turntable.gif").exists()
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "out"), "-o", str(tmp_path / "x"), "--mesh-threshold", "-1"])


def test_a_saved_asset_loads_as_it_was(model, tmp_path):
    from iso3d.generation import Asset

    asset = generate(EXAMPLE, model, config=_config(2), seed=3, out=tmp_path, progress=False, mesh_threshold=4.0)
    loaded = Asset.load(tmp_path)
    assert loaded.config == asset.config and loaded.config.mesh_threshold == 4.0
    assert loaded.run["steps"] == 2 and loaded.run["losses"] == asset.run["losses"]
    x = torch.rand(64, 3) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.field.density(x), asset.field.density(x))
    # The final checkpoint's occupancy grid comes back too: the loaded asset renders as the run's did.
    assert loaded.renderer.grid_ready and asset.renderer.grid_ready
    assert torch.equal(loaded.renderer.occupancy_state()["binaries"], asset.renderer.occupancy_state()["binaries"])
    assert torch.allclose(loaded.render_turntable(2, 16), asset.render_turntable(2, 16), atol=1e-6)
    # Without the checkpoint the grid is rebuilt from the field: nearly the run's (an EMA of its updates).
    (tmp_path / "checkpoint.pt").unlink()
    rebuilt = Asset.load(tmp_path)
    assert rebuilt.renderer.grid_ready
    same = rebuilt.renderer.occupancy_state()["binaries"] == asset.renderer.occupancy_state()["binaries"]
    assert same.float().mean() > 0.95  # 0.987 here
    assert torch.allclose(rebuilt.render_turntable(2, 16), asset.render_turntable(2, 16), atol=0.03)  # 0.0098 here
    # An asset saved before model_dtype existed ran its model in float32, not the dataclass default bf16.
    state = torch.load(tmp_path / "field.pt", weights_only=True)
    del state["config"]["model_dtype"]
    torch.save(state, tmp_path / "field.pt")
    assert GenerateConfig.model_dtype == "bfloat16" and Asset.load(tmp_path).config == asset.config
    with pytest.raises(FileNotFoundError, match="Asset.load: no field.pt in"):
        Asset.load(tmp_path / "missing")
    torch.save({"weights": {}}, tmp_path / "other" / "field.pt") if (tmp_path / "other").mkdir() is None else None
    with pytest.raises(ValueError, match="is not an asset's field.pt"):
        Asset.load(tmp_path / "other")
    with pytest.raises(ValueError, match="GenerateConfig: unknown keys \\['colour'\\]"):
        from iso3d.utils.dataclass_dict import dataclass_from_dict

        dataclass_from_dict(GenerateConfig, {"steps": 3, "colour": "red"})


@pytest.mark.parametrize("normals, normal_type", [("forward", "forward_difference"), ("analytic", "analytic")])
def test_normals_option_selects_the_field_normals(model, normals, normal_type):
    # 2 steps: the first is albedo-only (cpu_tiny's schedule), the second shades with these normals.
    asset = generate(EXAMPLE, model, config=_config(2), seed=0, progress=False, normals=normals)
    assert asset.config.normals is True and asset.field.config.normal_type == normal_type
    assert all(torch.isfinite(torch.tensor(asset.run["losses"])))


def test_official_schedule_milestones():
    from iso3d.generation import milestone_at

    cfg = GenerateConfig.official()
    assert milestone_at(cfg, 0, 256) == (64, 2) and milestone_at(cfg, 4999, 256) == (64, 2)
    assert milestone_at(cfg, 5000, 256) == (256, 1) and milestone_at(cfg, 9999, 256) == (256, 1)
    assert milestone_at(GenerateConfig.cpu_tiny(), 10, 32) == (32, 1)


def test_top_level_generate_is_the_function(model):
    import iso3d

    asset = iso3d.generate(EXAMPLE, model, config=_config(1), seed=0, progress=False)
    assert asset.run["steps"] == 1


def test_cuda_graph_option_is_recorded_and_ignored_on_the_cpu(model):
    asset = generate(EXAMPLE, model, config=_config(1), seed=0, progress=False, cuda_graph=True)
    assert asset.config.cuda_graph is True and asset.run["config"]["cuda_graph"] is True
    assert "cuda_graph" not in asset.run  # no graph on the CPU: nothing replayed, nothing to report
    assert GenerateConfig.official().cuda_graph is True  # on since an H100 measured it (RESULTS.md)
    with pytest.raises(TypeError, match="cuda_graph must be True, False or None"):
        generate(EXAMPLE, model, config=_config(1), progress=False, cuda_graph="false")


def test_resume_from_a_checkpoint_without_marched_records_keeps_steps_aligned(model, tmp_path):
    generate(EXAMPLE, model, config=_config(3), seed=0, out=tmp_path, progress=False)  # checkpoints at step 3
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["marched_per_ray"]  # as written before the record existed
    torch.save(state, tmp_path / "checkpoint.pt")
    resumed = generate(EXAMPLE, model, config=_config(5), seed=0, out=tmp_path, resume=True, progress=False)
    marched = resumed.run["marched_per_ray"]
    assert len(marched) == len(resumed.run["samples_per_ray"]) == 5
    assert marched[:3] == [None] * 3 and all(m is not None and m > 0 for m in marched[3:])


def test_compile_vae_option_reaches_the_encoder_and_is_a_no_op_for_pixel_models(model, monkeypatch):
    import iso3d.generation as g

    requested, encodes, real = [], [], g.latent_encoder

    def spy(m, **options):  # what generate asks for, and a wrapper that counts the encodes it makes
        requested.append(options)
        encode = real(m, **options)
        return lambda images: (encodes.append(images.shape[0]), encode(images))[1]

    monkeypatch.setattr(g, "latent_encoder", spy)
    plain = generate(EXAMPLE, model, config=_config(2), seed=0, progress=False)
    compiled = generate(EXAMPLE, model, config=_config(2), seed=0, progress=False, compile_vae=True)
    off = {"channels_last": False, "fused_group_norm": False}  # the fused norms: GPU only
    assert requested == [{"compile": False, **off}, {"compile": True, **off}]
    assert len(encodes) == 4  # every SDS step of both runs encoded through what latent_encoder returned
    assert compiled.run["config"]["compile_vae"] is True and plain.run["config"]["compile_vae"] is False
    assert compiled.run["losses"] == plain.run["losses"]  # iso3d-tiny has no VAE: nothing compiled
    assert GenerateConfig.official().compile_vae is False  # ~35 s per milestone to compile (RESULTS.md)
    with pytest.raises(TypeError, match="compile_vae must be True, False or None"):
        generate(EXAMPLE, model, config=_config(1), progress=False, compile_vae=1)


def test_fused_vae_norms_run_on_a_gpu_only_and_not_under_compile():
    from iso3d.generation import _vae_options

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    official = GenerateConfig.official()
    assert official.fused_vae_norms is True
    assert _vae_options(official, cuda) == {"compile": False, "channels_last": True, "fused_group_norm": True}
    assert _vae_options(official, cpu) == {"compile": False, "channels_last": False, "fused_group_norm": False}
    compiled = dataclasses.replace(official, compile_vae=True)  # inductor fuses the pairs itself
    assert _vae_options(compiled, cuda) == {"compile": True, "channels_last": False, "fused_group_norm": False}
    off = dataclasses.replace(official, fused_vae_norms=False)
    assert _vae_options(off, cuda) == {"compile": False, "channels_last": False, "fused_group_norm": False}


def test_resume_keeps_the_runs_own_vae_path(model, tmp_path):
    # A resumed run continues exactly: the VAE path of the run, not of the call (rounding differs).
    generate(EXAMPLE, model, config=_config(2), seed=0, out=tmp_path, progress=False, fused_vae_norms=False)
    resumed = generate(EXAMPLE, model, config=_config(3), seed=0, out=tmp_path, resume=True, progress=False,
                       fused_vae_norms=True)
    assert resumed.run["config"]["fused_vae_norms"] is False
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["fused_vae_norms"] is False
    del state["fused_vae_norms"]  # a checkpoint written before the option existed ran the plain VAE
    torch.save(state, tmp_path / "checkpoint.pt")
    again = generate(EXAMPLE, model, config=_config(4), seed=0, out=tmp_path, resume=True, progress=False)
    assert again.run["config"]["fused_vae_norms"] is False
    with pytest.raises(TypeError, match="fused_vae_norms must be True, False or None"):
        generate(EXAMPLE, model, config=_config(1), progress=False, fused_vae_norms="yes")


def test_guidance_scale_option_reaches_the_sds_loss(model):
    runs = {g: generate(EXAMPLE, model, config=_config(2), seed=0, progress=False, guidance_scale=g) for g in (1.0, 10.0)}
    assert runs[1.0].config.sds.guidance_scale == 1.0 and runs[10.0].run["config"]["sds"]["guidance_scale"] == 10.0
    assert runs[1.0].run["losses"] != runs[10.0].run["losses"]  # the same seed: only the guidance differs
    # A bundle's own SDS guidance is the default; the argument still wins over it.
    tuned = MultiViewDiffusion(dataclasses.replace(model.config, sds_guidance_scale=1.0), seed=0)
    assert generate(EXAMPLE, tuned, config=_config(1), progress=False).config.sds.guidance_scale == 1.0
    assert generate(EXAMPLE, tuned, config=_config(1), progress=False, guidance_scale=10).config.sds.guidance_scale == 10
    for bad in (-1.0, float("nan"), "3", True):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
            generate(EXAMPLE, model, config=_config(1), progress=False, guidance_scale=bad)


def test_batch_of_two_objects_and_resized_renders(model):
    cfg = dataclasses.replace(_config(2), milestones=((0, 24, 2),))
    asset = generate(EXAMPLE, model, config=cfg, seed=3, progress=False)
    assert len(asset.run["losses"]) == 2


def test_default_model_is_the_shipped_iso3d_tiny():
    from iso3d.models.bundle import default_bundle_path

    model = MultiViewDiffusion.from_pretrained(None)
    assert model.config.image_size == 32 and model.config.unet.space == "pixel"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "fp16 files load as float32"
    assert (default_bundle_path() / "MODEL_CARD.md").exists()
    stage1 = MultiViewDiffusion.from_pretrained("iso3d-tiny-stage1")  # shipped bundles load by name
    assert stage1.config == model.config
    with pytest.raises(FileNotFoundError, match="iso3d-tiny-stage1"):  # the error lists the shipped names
        MultiViewDiffusion.from_pretrained("no-such-model")
    with pytest.raises(FileNotFoundError, match="missing"):
        default_bundle_path("no-such-bundle")


def test_reference_view_loss_variant(model):
    from iso3d.generation import reference_view_loss
    from iso3d.io import load_image
    from iso3d.nerf import ImplicitVolume, VolumeRenderer

    cfg = _config(2)
    fld = ImplicitVolume(cfg.field, seed=0)
    loss = reference_view_loss(fld, VolumeRenderer(cfg.renderer), load_image(EXAMPLE), cfg, size=16)
    assert loss.item() > 0
    grads = torch.autograd.grad(loss, list(fld.parameters()), allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads), "every parameter group gets a gradient"
    plain = generate(EXAMPLE, model, config=cfg, seed=0, progress=False)
    with_l2 = generate(EXAMPLE, model, config=dataclasses.replace(cfg, reference_loss_weight=1.0), seed=0, progress=False)
    assert with_l2.run["losses"][0] > plain.run["losses"][0], "the L2 term is added to the SDS loss"


def test_sds_step_reads_a_v_prediction_bundle_as_epsilon(model):
    """SDS works on ε: a v-prediction UNet that predicts the same x₀ as an ε one gives the same loss and gradient."""
    from iso3d.generation import sds_step
    from iso3d.models.bundle import SchedulerConfig
    from iso3d.nerf import ImplicitVolume, VolumeRenderer

    cfg = _config(4)
    v_model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16,
                                                    scheduler=SchedulerConfig(prediction_type="v_prediction")), seed=0)
    acp = model.config.scheduler.alphas_cumprod("cpu")  # the same betas: only the parametrization differs
    token = torch.randn(1, 1, model.config.unet.cross_attention_dim, generator=torch.Generator().manual_seed(0))

    def as_v(x_t, t, *args, **kwargs):  # the ε model's prediction, expressed as v
        eps = model.unet(x_t, t, *args, **kwargs)
        a = acp[t].view(-1, 1, 1, 1)
        return v_model.config.scheduler.target((x_t - (1 - a).sqrt() * eps) / a.sqrt(), eps, a)

    results = {}
    for name, bundle, unet in (("epsilon", model, None), ("v", v_model, as_v)):
        fld, renderer = ImplicitVolume(cfg.field, seed=0), VolumeRenderer(cfg.renderer)
        loss = sds_step(bundle, fld, renderer, token, acp, cfg, 3, torch.Generator().manual_seed(3), unet=unet)
        loss.backward()
        results[name] = (loss.detach(), fld.encoding.params.grad.clone())
    assert results["epsilon"][0] > 0
    torch.testing.assert_close(results["v"][0], results["epsilon"][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(results["v"][1], results["epsilon"][1], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("preset", ["pixel", "latent"])
def test_model_dtype_casts_the_diffusion_model_and_keeps_the_field_float32(preset, tmp_path):
    from iso3d.models.presets import tiny_latent_bundle_config

    make = (lambda: MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)) if preset == "pixel" \
        else (lambda: MultiViewDiffusion(tiny_latent_bundle_config(image_size=32, width=16), seed=0))  # with a VAE
    model = make()
    half = generate(EXAMPLE, model, config=_config(2), seed=0, progress=False, dtype=torch.bfloat16, out=tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # dtype= casts the model passed in
    assert {p.dtype for p in half.field.parameters()} == {torch.float32}
    assert half.run["config"]["model_dtype"] == "bfloat16"
    # Without dtype= a model passed in runs as it is (no lossy cast of the caller's weights) and the
    # config records its dtype, whatever the config said.
    again = generate(EXAMPLE, model, config=_config(2), seed=0, progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and again.run["config"]["model_dtype"] == "bfloat16"
    assert again.run["losses"] == half.run["losses"]
    full = generate(EXAMPLE, make(), config=_config(2), seed=0, progress=False)  # fresh float32 weights
    assert full.run["config"]["model_dtype"] == "float32"
    # The same run up to bf16 rounding of the weights and of the model's inputs and outputs: a few units
    # of its roundoff 2^-8 (measured on the pixel model: 1.3e-3 and 1.7e-3 relative).
    for a, b in zip(half.run["losses"], full.run["losses"]):
        assert a != b and abs(a - b) <= 4 * 2**-8 * abs(b), (half.run["losses"], full.run["losses"])
    # A mixed model (a float32 VAE under a bf16 UNet) is run as it is; the UNet's dtype is recorded.
    if preset == "latent":
        mixed = make().to(torch.bfloat16)
        mixed.vae.float()
        run = generate(EXAMPLE, mixed, config=_config(1), seed=0, progress=False)
        assert {p.dtype for p in mixed.vae.parameters()} == {torch.float32} and run.run["config"]["model_dtype"] == "bfloat16"
        assert {p.dtype for p in mixed.unet.parameters()} == {torch.bfloat16} and math.isfinite(run.run["losses"][0])
    # Resuming in another dtype would not continue the run exactly: refused, with the dtype to use.
    with pytest.raises(ValueError, match="resume: the run in .* ran the model in bfloat16, this call in float32; "
                                         "resume with dtype='bfloat16'"):
        generate(EXAMPLE, make(), config=_config(3), seed=0, progress=False, out=tmp_path, resume=True)


def test_model_dtype_defaults_and_bad_values(model, monkeypatch):
    from iso3d.models.precision import default_model_dtype, supported_model_dtype

    assert GenerateConfig.official().model_dtype == "bfloat16" and GenerateConfig.cpu_tiny().model_dtype == "float32"
    assert default_model_dtype(None) == default_model_dtype("cpu") == getattr(torch, GenerateConfig.cpu_tiny().model_dtype)
    assert supported_model_dtype("bfloat16", torch.device("cpu")) == "bfloat16"
    gpu = torch.device("cuda", 0)  # a device object needs no GPU; its capability is faked
    for capability, expected in (((9, 0), "bfloat16"), ((8, 0), "bfloat16"), ((7, 5), "float16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert supported_model_dtype("bfloat16", gpu) == expected
        assert default_model_dtype(gpu) == getattr(torch, expected)
        assert supported_model_dtype("float32", gpu) == "float32"
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'bfloat16', 'float16'\)"):
        generate(EXAMPLE, model, config=_config(1), progress=False, dtype=torch.int8)
    with pytest.raises(ValueError, match="GenerateConfig.model_dtype must be one of"):
        GenerateConfig(model_dtype="half")
    with pytest.raises(ValueError, match="model: its weights are float64; expected one of"):
        generate(EXAMPLE, MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0).double(),
                 config=_config(1), progress=False)
