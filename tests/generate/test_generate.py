"""generate(): a short SDS run at tiny settings end to end, exact resume, NaN stop, outputs on disk."""

import dataclasses

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")

from iso3d.generate import GenerateConfig, generate  # noqa: E402
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
    import json

    run = json.loads((tmp_path / "run.json").read_text())
    assert run["steps"] == 4 and run["versions"]["torch"] == torch.__version__
    # After 4 steps the blob-initialized field (density up to ~softplus(10)) has a surface above 25 or
    # not; either way run.json must say which, and a mesh that exists must be on disk in all formats.
    if "vertices" in run["mesh"]:
        assert run["mesh"]["faces"] > 0
        for ext in ("glb", "obj", "ply"):
            assert (tmp_path / f"mesh.{ext}").stat().st_size > 0
    else:
        assert "no density above the threshold" in run["mesh"]["error"]


def test_ctrl_c_saves_and_resume_continues_exactly(model, tmp_path, monkeypatch):
    import iso3d.generate as g

    straight = generate(EXAMPLE, model, config=_config(6), seed=1, progress=False)
    real_step = g.sds_step

    def interrupted(*args):
        if args[6] == 4:  # the step argument: Ctrl-C arrives during step 4
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(g, "sds_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(EXAMPLE, model, config=_config(6), seed=1, out=tmp_path, progress=False)
    monkeypatch.setattr(g, "sds_step", real_step)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4
    resumed = generate(EXAMPLE, model, config=_config(6), seed=1, out=tmp_path, resume=True, progress=False)
    assert resumed.run["losses"] == straight.run["losses"]
    for (name, a), b in zip(straight.field.state_dict().items(), resumed.field.state_dict().values()):
        assert torch.equal(a, b), name


def test_nan_loss_stops_and_keeps_the_checkpoint(model, tmp_path, monkeypatch):
    generate(EXAMPLE, model, config=_config(3), seed=2, out=tmp_path, progress=False)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    real = model.unet.forward

    def broken(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(model.unet, "forward", broken)
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        generate(EXAMPLE, model, config=_config(6), seed=2, out=tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved


def test_bad_arguments(model, tmp_path):
    with pytest.raises(ValueError, match="no default model"):
        generate(EXAMPLE)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        generate(EXAMPLE, model, steps=0)
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint.pt"):
        generate(EXAMPLE, model, config=_config(2), out=tmp_path / "none", resume=True)
    with pytest.raises(FileNotFoundError, match="no such file"):
        generate(tmp_path / "missing.png", model, config=_config(2))


def test_generate_cli(model, tmp_path):
    import subprocess
    import sys

    bundle = model.save_pretrained(tmp_path / "bundle")
    result = subprocess.run([sys.executable, "-m", "iso3d", "generate", EXAMPLE, "-o", str(tmp_path / "out"),
                             "--model", str(bundle), "--steps", "2", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "turntable.gif").exists() and (tmp_path / "out" / "run.json").exists()


def test_official_schedule_milestones():
    from iso3d.generate import milestone_at

    cfg = GenerateConfig.official()
    assert milestone_at(cfg, 0, 256) == (64, 2) and milestone_at(cfg, 4999, 256) == (64, 2)
    assert milestone_at(cfg, 5000, 256) == (256, 1) and milestone_at(cfg, 9999, 256) == (256, 1)
    assert milestone_at(GenerateConfig.cpu_tiny(), 10, 32) == (32, 1)


def test_batch_of_two_objects_and_resized_renders(model):
    cfg = dataclasses.replace(_config(2), milestones=((0, 24, 2),))
    asset = generate(EXAMPLE, model, config=cfg, seed=3, progress=False)
    assert len(asset.run["losses"]) == 2
