"""Procedural objects: the renderer against analytic cases; data set splits, determinism, cache."""

import math

import pytest
import torch

from iso3d.data import MultiViewDataset, ProceduralObject, RenderSettings, random_object, render_object
from iso3d.data.procedural import PRIMITIVES, Primitive


def _sphere(radius, color):
    return ProceduralObject([Primitive("sphere", torch.zeros(3), torch.eye(3), torch.tensor([radius]), torch.tensor(color))])


def test_sphere_silhouette_radius_and_colour():
    settings = RenderSettings(image_size=64, fovy=40.0, distance=2.0, supersample=1, ambient=0.3)
    r = 0.5
    img = render_object(_sphere(r, (0.8, 0.3, 0.1)), torch.tensor([10.0]), torch.tensor([70.0]), settings)[0]
    # Silhouette: the tangent cone's half-angle asin(r/d) projects to f·tan(asin(r/d)) pixels.
    focal = 0.5 * 64 / math.tan(math.radians(20.0))
    expected_radius = focal * math.tan(math.asin(r / 2.0))
    area = img[3].sum().item()
    assert math.sqrt(area / math.pi) == pytest.approx(expected_radius, rel=0.03)
    # The centre pixel faces the head light: colour = albedo·(ambient + (1 − ambient)·1) = albedo.
    centre = img[:3, 31:33, 31:33].mean(dim=(1, 2))
    torch.testing.assert_close(centre, torch.tensor([0.8, 0.3, 0.1]), atol=0.01, rtol=0)
    assert (img[:3, 0, 0] == 1).all() and img[3, 0, 0] == 0  # white, transparent background


@pytest.mark.parametrize("kind", PRIMITIVES)
def test_primitive_sdfs_are_distances(kind):
    """|∇SDF| = 1 off the surface, and the zero level set is where rays stop."""
    gen = torch.Generator().manual_seed(0)
    sizes = {"sphere": [0.3], "box": [0.2, 0.25, 0.15], "cylinder": [0.2, 0.25], "cone": [0.25, 0.2],
             "torus": [0.25, 0.07], "capsule": [0.1, 0.2]}
    prim = Primitive(kind, torch.zeros(3), torch.eye(3), torch.tensor(sizes[kind]), torch.ones(3))
    p = (torch.rand(2000, 3, generator=gen) * 2 - 1).requires_grad_()
    d = prim.sdf(p)
    (g,) = torch.autograd.grad(d.sum(), p)
    far = d.abs() > 0.02
    assert ((g[far].norm(dim=-1) - 1).abs() < 1e-3).float().mean() > 0.98
    assert (d < 0).any() and (d > 0).any()


def test_objects_and_splits_are_deterministic_and_disjoint(tmp_path):
    settings = RenderSettings(image_size=16)
    a = MultiViewDataset("train", 3, settings=settings, progress=False, cache_dir=tmp_path)
    b = MultiViewDataset("train", 3, settings=settings, progress=False, cache_dir=tmp_path)  # from the cache
    fresh = MultiViewDataset("train", 3, settings=settings, progress=False)
    parallel = MultiViewDataset("train", 3, settings=settings, progress=False, workers=2)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert torch.equal(a.views, b.views) and torch.equal(a.views, fresh.views)
    assert torch.equal(a.views, parallel.views) and torch.equal(a.poses, parallel.poses)
    val = MultiViewDataset("val", 3, settings=settings, progress=False)
    assert not set(a.seeds) & set(val.seeds)
    s = a[0]
    gaps = (s.azimuth.roll(-1) - s.azimuth) % 360
    torch.testing.assert_close(gaps, torch.full((4,), 90.0), atol=1e-3, rtol=0)
    assert 0 <= s.elevation[0] <= 30
    assert s.views[:, 3].amax() == 1.0, "every view sees the object"
    grid = a.object(0).sdf_grid(resolution=16)
    assert grid.shape == (16, 16, 16) and (grid < 0).any() and (grid > 0).any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        MultiViewDataset("training", 2)
    with pytest.raises(ValueError, match="size must be >= 1"):
        MultiViewDataset("train", 0)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        MultiViewDataset("train", 2, workers=0)
    assert len(random_object(5).primitives) in (1, 2, 3)
