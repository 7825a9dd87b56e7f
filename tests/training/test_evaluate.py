"""Evaluation metrics: PSNR/SSIM/IoU on known cases; the evaluation loops run."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from iso3d.utils.torchvision_compat import patch_torchvision_if_needed

patch_torchvision_if_needed()
pytest.importorskip("diffusers", reason="diffusers not installed (pip install diffusers)")

from iso3d.data import MultiViewDataset, RenderSettings  # noqa: E402
from iso3d.models.bundle import MultiViewDiffusion  # noqa: E402
from iso3d.models.presets import tiny_bundle_config  # noqa: E402
from iso3d.training.evaluate import (evaluate_embedding_probes, evaluate_retrieval, evaluate_views,  # noqa: E402
                                    linear_probe_accuracy, linear_probe_r2, psnr, silhouette_iou, ssim)


def test_metrics_on_known_cases():
    a = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(psnr(a, a)).logical_not().all() and (psnr(a, a) > 90).all()
    b = (a + 0.1).clamp(0, 1)
    mse = (a - b).square().flatten(1).mean(1)
    torch.testing.assert_close(psnr(a, b), -10 * torch.log10(mse))
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    assert (ssim(a, torch.rand_like(a)) < 0.2).all()
    white = torch.ones(1, 3, 8, 8)
    pred = white.clone()
    pred[:, :, :4] = 0.2  # top half dark
    alpha = torch.zeros(1, 1, 8, 8)
    alpha[:, :, :, :4] = 1  # left half true
    assert silhouette_iou(pred, alpha).item() == pytest.approx(16 / 48)
    assert math.isclose(silhouette_iou(pred, pred[:, :1] < 0.5).item(), 1.0)


def test_evaluation_loops_run():
    data = MultiViewDataset("test", 2, settings=RenderSettings(image_size=16), progress=False)
    model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)
    views = evaluate_views(model, data, num_inference_steps=2)
    assert views["objects"] == 2 and all(math.isfinite(views[k]) for k in ("psnr", "ssim", "silhouette_iou"))
    with_ref = evaluate_views(model, data, num_inference_steps=2, with_reference=True)
    assert with_ref["objects"] == 2 and with_ref["psnr"] != views["psnr"]  # the reference frame changes the samples
    retrieval = evaluate_retrieval(model, data)
    assert 0.0 <= retrieval["retrieval_accuracy"] <= 1.0 and retrieval["chance"] == 0.5


def test_linear_probes_find_what_the_features_hold_and_nothing_else():
    gen = torch.Generator().manual_seed(0)
    n, n_fit = 400, 300
    labels = torch.randint(0, 3, (n,), generator=gen)
    noise = torch.randn(n, 8, generator=gen)
    informative = torch.cat([F.one_hot(labels, 3).float() + 0.1 * torch.randn(n, 3, generator=gen), noise], 1)
    assert linear_probe_accuracy(informative, labels, n_fit) == 1.0
    assert linear_probe_accuracy(noise, labels, n_fit) < 0.55  # chance is about 1/3
    targets = noise[:, :3] @ torch.randn(3, 2, generator=gen) + 0.5
    assert linear_probe_r2(noise, targets, n_fit) == pytest.approx(1.0, abs=1e-9)
    assert linear_probe_r2(noise, torch.randn(n, 2, generator=gen), n_fit) < 0.1
    with pytest.raises(ValueError, match="n_fit"):
        linear_probe_accuracy(noise, labels, n)
    with pytest.raises(ValueError, match="features must be"):
        linear_probe_r2(noise, targets[:10], n_fit)
    with pytest.raises(ValueError, match="constant"):
        linear_probe_r2(noise, torch.ones(n, 2), n_fit)


def test_evaluate_command_checks_probe_objects_first():
    from iso3d.cli import main

    with pytest.raises(ValueError, match="--probe-objects"):
        main(["eval-model", "no-such-bundle", "--probe-objects", "2"])


def test_embedding_probes_run_on_a_dataset():
    data = MultiViewDataset("val", 8, settings=RenderSettings(image_size=16), progress=False)
    model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)
    probes = evaluate_embedding_probes(model, data, batch_size=3)
    assert probes["probe_objects"] == 8
    assert 0 <= probes["kind_probe_accuracy"] <= 1 and 0 <= probes["kind_majority"] <= 1
    assert math.isfinite(probes["colour_probe_r2"])
    with pytest.raises(ValueError, match="fit_fraction"):
        evaluate_embedding_probes(model, data, fit_fraction=1.0)


def test_evaluate_command(tmp_path):
    import json
    import subprocess
    import sys

    import dataclasses

    from iso3d.data import ObjectSampling

    model = MultiViewDiffusion(tiny_bundle_config(image_size=16, width=16), seed=0)
    bundle = model.save_pretrained(tmp_path / "r" / "stage1" / "bundle")
    # A bundle trained on other objects is evaluated on held-out objects drawn alike.
    single = ObjectSampling(max_primitives=1, orientation="upright", scale=1.5)
    model.config = dataclasses.replace(model.config, training_objects=dataclasses.asdict(single))
    other = model.save_pretrained(tmp_path / "c" / "stage1" / "bundle")
    result = subprocess.run([sys.executable, "-m", "iso3d", "evaluate", str(bundle), str(other), "--objects", "2", "--steps", "1",
                             "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                             "--grid", str(tmp_path / "grid.png"), "--grid-objects", "2", "--with-reference",
                             "--probe-objects", "8"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert set(report[str(bundle)]) >= {"psnr", "ssim", "silhouette_iou", "retrieval_accuracy", "kind_probe_accuracy",
                                        "colour_probe_r2"}
    assert report[str(bundle)]["probe_objects"] == 8
    from PIL import Image

    grid = Image.open(report[str(bundle)]["grid"])  # 2 rows of 1 input + 4 sampled + 4 true 16² views
    assert grid.size == (9 * 16, 2 * 16) and Path(report[str(bundle)]["grid"]).name == "grid_stage1.png"
    assert Path(report[str(other)]["grid"]).name == "grid_stage1_2.png"  # two runs' stage1/bundle: two grids
    expected = {MultiViewDataset(split, n, settings=RenderSettings(image_size=16), object_sampling=sampling,
                                 progress=False)._cache_path(tmp_path / "cache").name
                for sampling in (ObjectSampling(), single) for split, n in (("test", 2), ("val", 8))}
    assert {p.name for p in (tmp_path / "cache").glob("*.npz")} == expected
