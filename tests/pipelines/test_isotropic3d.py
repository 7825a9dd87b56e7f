"""Isotropic3DPipeline: the model loaded once, generate() per call, a dataclass output, input checks."""

import dataclasses

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")

from iso3d.generation import GenerateConfig, generate  # noqa: E402
from iso3d.kernels.hash_grid import HashGridConfig  # noqa: E402
from iso3d.models.bundle import MultiViewDiffusion  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402
from iso3d.nerf import FieldConfig, RendererConfig  # noqa: E402
from iso3d.pipelines import Isotropic3DOutput, Isotropic3DPipeline  # noqa: E402

EXAMPLE = "examples/red_ball.png"


def _config(steps):
    return dataclasses.replace(
        GenerateConfig.cpu_tiny(steps=steps), renderer=RendererConfig(num_samples_per_ray=24),
        field=FieldConfig(encoding=HashGridConfig(n_levels=4, log2_hashmap_size=12), hidden_dims=16))


def _model():
    return MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)


def test_a_call_is_generate_with_the_pipelines_model_and_a_preview(tmp_path):
    pipe = Isotropic3DPipeline(_model())
    pipe.set_progress_bar_config(disable=True)
    result = pipe(EXAMPLE, config=_config(3), seed=1, out=tmp_path)
    assert isinstance(result, Isotropic3DOutput) and result.asset.run["steps"] == 3
    assert (tmp_path / "mesh.glb").is_file() and (tmp_path / "run.json").is_file()
    # The same run as generate's, step for step.
    direct = generate(EXAMPLE, _model(), config=_config(3), seed=1, progress=False)
    assert result.asset.run["losses"] == direct.run["losses"]
    # The preview is the NeRF from 4 sides: the turntable's frames 0, 3, 6, 9 of 12.
    assert result.preview.shape == (4, 3, 64, 64) and 0 <= result.preview.min() and result.preview.max() <= 1
    assert torch.allclose(result.preview, result.asset.render_turntable(12, 64)[::3], atol=1e-6)
    # Resume through the pipeline continues the saved run.
    more = pipe(EXAMPLE, config=_config(5), seed=1, out=tmp_path, resume=True)
    assert more.asset.run["losses"][:3] == result.asset.run["losses"] and len(more.asset.run["losses"]) == 5


def test_the_model_keeps_the_pipelines_dtype():
    from iso3d.pipelines import MultiViewPipeline

    assert MultiViewPipeline(_model()).to(dtype=torch.bfloat16).dtype == torch.bfloat16
    pipe = Isotropic3DPipeline(_model()).to(dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.dtype == torch.bfloat16 and pipe.device == torch.device("cpu")
    result = pipe(EXAMPLE, config=_config(1))  # cpu_tiny says float32; the pipeline's dtype wins
    assert result.asset.config.model_dtype == "bfloat16" and pipe.dtype == torch.bfloat16


def test_from_pretrained_defaults_and_sample_views():
    pipe = Isotropic3DPipeline.from_pretrained(device="cpu")  # the shipped iso3d-tiny, float32 on the CPU
    assert pipe.dtype == torch.float32 and pipe.model.config.image_size == 32
    pipe.set_progress_bar_config(disable=True)
    views = pipe.sample_views(EXAMPLE, num_inference_steps=2, seed=0)
    assert views.images.shape == (4, 3, 32, 32) and torch.isfinite(views.images).all()


def test_bad_input():
    with pytest.raises(TypeError, match="model must be a MultiViewDiffusion, got str"):
        Isotropic3DPipeline("iso3d-tiny")
    pipe = Isotropic3DPipeline(_model())
    with pytest.raises(ValueError, match="steps must be >= 1"):
        pipe(EXAMPLE, steps=0)
    with pytest.raises(FileNotFoundError):
        Isotropic3DPipeline.from_release_checkpoint("missing/isotropic3d.ckpt")
    with pytest.raises(TypeError, match="progress must be a bool or a dict of tqdm options, got str"):
        generate(EXAMPLE, pipe.model, config=_config(1), progress="no")
    pipe.set_progress_bar_config(lave=False, disable=True)  # misspelled: refused before any work
    with pytest.raises(TypeError, match=r"progress: not tqdm options: .*Unknown argument\(s\): \{'lave': False\}"):
        pipe(EXAMPLE, config=_config(1))
