"""iso3d eval end to end at toy settings: every method runs and every metric is in range."""

import dataclasses
import math

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")
pytest.importorskip("open_clip", reason="open_clip not installed (pip install open-clip-torch)")
pytest.importorskip("mcubes", reason="PyMCubes not installed (pip install PyMCubes)")

from iso3d.evaluation import EvalConfig, evaluate_methods  # noqa: E402
from iso3d.models.bundle import MultiViewDiffusion  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402


def test_every_method_on_one_object(tmp_path):
    trained_on = {"max_primitives": 1, "orientation": "upright", "scale": 1.5}
    model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)
    model.config = dataclasses.replace(model.config, training_objects=trained_on)
    config = EvalConfig(objects=1, steps=2, input_size=32, view_size=16, surface_points=256, iou_resolution=12,
                        normals="analytic", guidance_scale=5.0)  # step 2 of 2 shades with analytic normals
    results = evaluate_methods(model, stage1_bundle=model, config=config, out=tmp_path, progress=False)
    assert results["config"]["normals"] == "analytic" and results["config"]["guidance_scale"] == 5.0
    assert results["config"]["object_sampling"] == trained_on  # unset: held-out objects drawn as the model's
    row = results["objects"][0]
    for method in ("isotropic3d", "reference_l2", "stage1", "sphere"):
        r = row[method]
        if "error" in r:  # a 2-step field may have no surface above the threshold: said, not hidden
            assert "no density above the threshold" in r["error"] or "no ray's opacity reaches 1/2" in r["error"]
            continue
        assert r["chamfer"] >= 0 and 0 <= r["volume_iou"] <= 1 and -1 <= r["ssim"] <= 1
        assert 0 < r["view_fovy"] < 180
        assert math.isfinite(r["psnr"]) and -1 <= r["clip_similarity"] <= 1
    assert "error" not in row["sphere"]
    assert (tmp_path / "results.json").exists() and (tmp_path / "object_00.png").exists()
    with pytest.raises(ValueError, match="unknown"):
        evaluate_methods(model, config=config, methods=("magic",))
    with pytest.raises(ValueError, match="stage1_bundle is None"):
        evaluate_methods(model, config=config, methods=("stage1",))


def test_several_mesh_surfaces_are_measured_on_the_same_nerf(tmp_path, monkeypatch):
    import iso3d.generation

    runs = []
    real = iso3d.generation.generate
    monkeypatch.setattr(iso3d.generation, "generate", lambda *a, **k: runs.append(k["mesh_surface"]) or real(*a, **k))
    model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)
    config = EvalConfig(objects=1, steps=2, input_size=32, view_size=16, surface_points=256, iou_resolution=12,
                        mesh_surface=("density", "hull"))
    results = evaluate_methods(model, config=config, methods=("isotropic3d", "sphere"), out=tmp_path, progress=False)
    assert runs == ["density"]  # one SDS run, meshed twice
    row = results["objects"][0]
    assert set(row) == {"object_seed", "isotropic3d@density", "isotropic3d@hull", "sphere"}
    assert set(results["mean"]) == {"isotropic3d@density", "isotropic3d@hull", "sphere"}
    for surface in ("density", "hull"):
        r = row[f"isotropic3d@{surface}"]
        if "error" in r:  # a 2-step field may show nothing to mesh: said, not hidden
            assert "no density above the threshold" in r["error"] or "no ray's opacity reaches 1/2" in r["error"]
            continue
        assert r["mesh_surface"] == surface
        assert 0 <= r["mesh_silhouette_iou"] <= 1 and r["mesh_size_vs_renders"] >= 0
        assert "mesh_silhouette_iou" in results["mean"][f"isotropic3d@{surface}"]
    assert "mesh_silhouette_iou" not in row["sphere"]  # a procedural shape has no renders of its own to match
    assert "mesh_silhouette_iou" not in results["mean"]["sphere"]
    # One surface: the method's plain name, as before.
    single = evaluate_methods(model, config=EvalConfig(objects=1, steps=1, input_size=32, view_size=16, surface_points=256,
                                                       iou_resolution=12, mesh_surface="hull"),
                              methods=("isotropic3d",), progress=False)
    assert set(single["objects"][0]) == {"object_seed", "isotropic3d"} and runs == ["density", "hull"]
    for bad in ((), ("hull", "depth"), ("hull", None)):
        with pytest.raises(ValueError, match="config.mesh_surface"):
            evaluate_methods(model, config=EvalConfig(objects=1, mesh_surface=bad), methods=("sphere",))
    assert runs == ["density", "hull"]  # refused before any run


def test_mesh_vs_renders_sees_a_shrunken_mesh():
    # The same field's renders against its matched level (the renders' size) and a level far inside it.
    from iso3d.evaluation.compare import _FieldAsset
    from iso3d.generation import Asset, GenerateConfig
    from iso3d.nerf import FieldConfig, ImplicitVolume, RendererConfig, VolumeRenderer

    config = GenerateConfig.cpu_tiny()
    field = ImplicitVolume(FieldConfig(encoding=config.field.encoding, hidden_dims=16), seed=0).eval()  # the blob
    asset = Asset(field, VolumeRenderer(RendererConfig(num_samples_per_ray=64)), config, {})
    from iso3d.cameras import camera_to_world

    c2w = camera_to_world(torch.tensor([0.0, 20.0]), torch.tensor([0.0, 90.0]), torch.tensor([2.5, 2.5]))
    shown = _FieldAsset(asset, 256).render(c2w, 40.0, 32, 0.3)[:, 3] > 0.5
    sizes, deep = {}, 4 * asset.surface_threshold  # the matched level, and one far inside the blob
    for level in ("silhouette", deep):
        asset.config = dataclasses.replace(config, mesh_threshold=level, mesh_surface="density")
        mesh = _FieldAsset(asset, 256).silhouette(c2w, 40.0, 32)
        sizes[level] = math.sqrt(float(mesh.sum()) / float(shown.sum()))
    assert 0.9 < sizes["silhouette"] < 1.1
    assert sizes[deep] < 0.85 * sizes["silhouette"]
