"""Procedural objects: the renderer against analytic cases; data set splits, determinism, cache."""

import hashlib
import json
import math
from dataclasses import asdict

import pytest
import torch

from iso3d.data import (MultiViewDataset, ObjectSampling, ProceduralObject, RenderSettings, ViewSampling, random_object,
                        render_object)
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
    # Object seeds past the split's range would be the next split's (train seed 10 = val seed 0).
    for seed, size in ((10, 1), (9, 100_001), (-1, 1)):
        with pytest.raises(ValueError, match="splits stay disjoint"):
            MultiViewDataset("train", size, seed=seed, progress=False)
    for seed in (1.5, True):
        with pytest.raises(TypeError, match="seed must be an int"):
            MultiViewDataset("train", 1, seed=seed, progress=False)
    assert len(random_object(5).primitives) in (1, 2, 3)


def _axis_up(rotation):
    """The world direction of a primitive's local y axis (its symmetry axis)."""
    return rotation @ torch.tensor([0.0, 1.0, 0.0])


def test_upright_objects_rest_and_turn_about_the_vertical_only():
    upright, any_pose = ObjectSampling(orientation="upright"), ObjectSampling(orientation="any")
    yaws, lying_azimuths, tilted_any = [], [], 0
    for seed in range(60):
        obj = random_object(seed, upright)
        for prim in obj.primitives:
            r = prim.rotation
            torch.testing.assert_close(r @ r.T, torch.eye(3), atol=1e-5, rtol=0)
            assert torch.det(r) == pytest.approx(1.0, abs=1e-5)
            axis = _axis_up(r)
            up_in_local = r.T @ torch.tensor([0.0, 1.0, 0.0])  # the world's up seen from the primitive
            if prim.kind in ("cylinder", "capsule", "torus") and abs(axis[1]) < 1e-5:
                # laid down (a ring: on its edge): the axis is horizontal and up is the local −z
                lying_azimuths.append(math.atan2(axis[2].item(), axis[0].item()))
                torch.testing.assert_close(up_in_local, torch.tensor([0.0, 0.0, -1.0]), atol=1e-5, rtol=0)
            else:  # standing: the axis is the world's up, exactly (cones on their base, boxes flat)
                torch.testing.assert_close(axis, torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0)
            x = r @ torch.tensor([1.0, 0.0, 0.0])
            yaws.append(math.atan2(x[2].item(), x[0].item()))
        other = random_object(seed, any_pose)
        tilted_any += sum(0.05 < abs(_axis_up(p.rotation)[1]) < 0.95 for p in other.primitives)  # neither up nor flat
        assert [p.rotation.tolist() for p in obj.primitives] == [
            p.rotation.tolist() for p in random_object(seed, upright).primitives], "deterministic given the seed"
    assert len(lying_azimuths) > 3, "some cylinders, capsules or rings lie down"
    assert max(lying_azimuths) - min(lying_azimuths) > math.pi / 2, "lying axes point in varied horizontal directions"
    assert max(yaws) - min(yaws) > math.pi, "the turn about the vertical axis varies"
    assert tilted_any > 10, "orientation='any' still tilts primitives freely"


def test_upright_cone_is_wider_at_its_base_in_every_view():
    seed = next(s for s in range(1000) if [p.kind for p in random_object(s, ObjectSampling(orientation="upright")).primitives] == ["cone"])
    obj = random_object(seed, ObjectSampling(orientation="upright"))
    imgs = render_object(obj, torch.tensor([0.0, 10.0, 20.0, 30.0]), torch.tensor([0.0, 90.0, 180.0, 270.0]),
                         RenderSettings(image_size=48, supersample=1))
    for alpha in imgs[:, 3]:
        rows = alpha.sum(dim=1).nonzero().flatten()  # image rows that see the cone, top to bottom
        top, bottom = alpha[rows[0] + 1].sum(), alpha[rows[-1] - 2].sum()
        assert bottom > 2 * top, "the apex is up: the silhouette widens toward the bottom of the image"


def test_object_sampling_reaches_the_data_set_and_its_cache(tmp_path):
    settings = RenderSettings(image_size=16)
    any_pose = MultiViewDataset("train", 2, settings=settings, progress=False, cache_dir=tmp_path)
    upright = MultiViewDataset("train", 2, settings=settings, object_sampling=ObjectSampling(orientation="upright"),
                               progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2, "each distribution has its own cache file"
    assert not torch.equal(any_pose.views, upright.views)
    assert upright.object(0).primitives[0].rotation.tolist() == random_object(
        upright.seeds[0], ObjectSampling(orientation="upright")).primitives[0].rotation.tolist()
    # The default ("any": the data before ObjectSampling existed) keeps the cache name it had then.
    assert ObjectSampling().orientation == "any"
    old_key = json.dumps(["train", 2, 0, asdict(settings), asdict(ViewSampling())], sort_keys=True)
    assert any_pose._cache_path(tmp_path).name == f"procedural-train-2-{hashlib.sha1(old_key.encode()).hexdigest()[:10]}.npz"


def test_bad_object_sampling():
    with pytest.raises(ValueError, match="orientation must be 'upright' or 'any'"):
        ObjectSampling(orientation="sideways")
    with pytest.raises(ValueError, match="max_primitives must be an int >= 1"):
        ObjectSampling(max_primitives=0)
    with pytest.raises(TypeError, match="sampling must be an ObjectSampling"):
        random_object(0, 3)
    with pytest.raises(TypeError, match="object_sampling must be an ObjectSampling"):
        MultiViewDataset("train", 2, object_sampling="upright")
    assert max(len(random_object(s, ObjectSampling(max_primitives=1)).primitives) for s in range(20)) == 1


def test_object_scale_multiplies_sizes_and_centres():
    base, scaled = random_object(5, ObjectSampling(max_primitives=3)), random_object(5, ObjectSampling(scale=1.5))
    assert len(base.primitives) == len(scaled.primitives)
    for a, b in zip(base.primitives, scaled.primitives):
        assert a.kind == b.kind and torch.equal(a.rotation, b.rotation) and torch.equal(a.color, b.color)
        torch.testing.assert_close(b.size, 1.5 * a.size)
        torch.testing.assert_close(b.center, 1.5 * a.center)
    # Scale 1 is the data as before the option existed, bit for bit.
    one = random_object(5, ObjectSampling(scale=1.0))
    assert all(torch.equal(a.size, b.size) and torch.equal(a.center, b.center) for a, b in zip(base.primitives, one.primitives))
    for bad in (0, -1.0, 2.5, True, "1"):
        with pytest.raises(ValueError, match="scale must be a number in \\(0, 2\\]"):
            ObjectSampling(scale=bad)


def test_cli_object_sampling_defaults_come_from_the_bundle_then_object_sampling():
    from iso3d.cli import build_parser
    from iso3d.training.cli import object_sampling_from_args

    parser = build_parser()
    trained = {"max_primitives": 1, "orientation": "upright", "scale": 1.5}
    for argv in (["train", "stage1", "--out", "x"], ["eval-model", "b"], ["eval"]):
        args = parser.parse_args(argv)
        assert object_sampling_from_args(args) == ObjectSampling(), argv
        assert object_sampling_from_args(args, trained) == ObjectSampling(**trained), argv
    args = parser.parse_args(["eval", "--orientation", "any", "--object-scale", "1.2"])
    assert object_sampling_from_args(args, trained) == ObjectSampling(max_primitives=1, orientation="any", scale=1.2)
    with pytest.raises(ValueError, match="max_primitives must be an int >= 1"):
        object_sampling_from_args(parser.parse_args(["eval", "--max-primitives", "0"]))


def test_cli_mesh_surfaces_are_the_exporters():
    from iso3d.cli import _MESH_SURFACES, build_parser
    from iso3d.export import MESH_SURFACES

    assert _MESH_SURFACES == MESH_SURFACES  # restated in the CLI so that building its parser imports no torch
    parser = build_parser()
    assert parser.parse_args(["eval", "--mesh-surface", "density", "hull"]).mesh_surface == ["density", "hull"]
    assert parser.parse_args(["generate", "x.png", "--mesh-surface", "hull"]).mesh_surface == "hull"
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "x.png", "--mesh-surface", "depth"])
