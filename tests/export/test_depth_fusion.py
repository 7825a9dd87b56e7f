"""The rendered surface (depth fused from 30 views) and the silhouettes' visual hull: where a ball's renders
put its edge, a hole seen through stays open, what no view sees is inside, bad input."""

import dataclasses
import math

import numpy as np
import pytest
import torch

pytest.importorskip("mcubes", reason="PyMCubes not installed (pip install PyMCubes)")
pytest.importorskip("trimesh", reason="trimesh not installed (pip install trimesh)")

from iso3d.export import (MeshExportConfig, density_volume, extract_mesh, fuse_rendered_depth,  # noqa: E402
                          silhouette_hull)
from iso3d.nerf import FieldOutput  # noqa: E402


class Field(torch.nn.Module):
    """A density function with a grey albedo, as the exporters want a field."""

    def __init__(self, density):
        super().__init__()
        self.fn = density
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def density(self, x):
        return self.fn(x)

    def forward(self, x, with_normals=False):
        return FieldOutput(self.density(x), torch.full((x.shape[0], 3), 0.5))


CENTRE = torch.tensor([0.1, -0.05, 0.0])


def uniform_ball(x, sigma=40.0, radius=0.5):
    return sigma * ((x - CENTRE).norm(dim=-1) < radius).float()


def torus(x, major=0.45, minor=0.15, sigma=50.0):  # in the xz plane, around the y axis
    ring = torch.stack([x[:, [0, 2]].norm(dim=-1) - major, x[:, 1]], -1)
    return sigma * (ring.norm(dim=-1) < minor).float()


def hollow_ball(x):  # the shell 0.3 < r < 0.5: its inside is seen by no view
    r = x.norm(dim=-1)
    return 100.0 * ((r > 0.3) & (r < 0.5)).float()


def test_uniform_ball_meshes_where_its_renders_put_the_edge():
    # Seen head-on, a ray's opacity reaches 1/2 at depth ln 2 / σ inside the sphere; an oblique ray,
    # with a shorter chord, reaches it at a larger radius: the fused surface lies between 0.483 and 0.5.
    mesh = extract_mesh(Field(uniform_ball), MeshExportConfig(threshold=1.0, resolution=64, coarse_resolution=24,
                                                             surface="rendered"))
    radii = np.linalg.norm(mesh.vertices - CENTRE.numpy(), axis=1)
    voxel = 1.1 / 63  # the fine box is about the ball's 1.0 plus a coarse cell each side
    assert 0.5 - math.log(2) / 40 - voxel / 2 <= radii.mean() <= 0.5 + voxel / 2
    assert radii.std() < voxel / 2
    tm = mesh.to_trimesh()
    assert tm.is_watertight and len(tm.split(only_watertight=False)) == 1


def test_a_hole_seen_through_stays_open():
    volume = density_volume(Field(torus), MeshExportConfig(threshold=1.0, resolution=64, coarse_resolution=24,
                                                          surface="rendered"))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.45, 0.0, 0.0], [0.0, 0.0, -0.45], [0.0, 0.3, 0.0]])
    assert volume.occupied(points).tolist() == [False, True, True, False]  # the hole, the tube twice, above


def test_what_no_view_sees_is_inside():
    volume = density_volume(Field(hollow_ball), MeshExportConfig(threshold=1.0, resolution=48, coarse_resolution=16,
                                                                surface="rendered"))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.4, 0.0], [0.7, 0.0, 0.0]])
    assert volume.occupied(points).tolist() == [True, True, False]


def test_fused_distance_is_truncated_signed_and_ball_shaped():
    n = 40
    axis = torch.linspace(-0.8, 0.8, n, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    step = 1.6 / (n - 1)
    sdf = fuse_rendered_depth(uniform_ball(x.float()).reshape(n, n, n), [-0.8] * 3, [step] * 3, truncation=4 * step)
    assert sdf.shape == (n, n, n) and sdf.dtype == torch.float32
    assert sdf.min() >= -4 * step - 1e-6 and sdf.max() <= 4 * step + 1e-6
    r = (x.float() - CENTRE).norm(dim=-1).reshape(n, n, n)
    assert (sdf[r < 0.35] < 0).all() and (sdf[r > 0.6] > 0).all()
    shell = (r > 0.44) & (r < 0.54)  # within the band: the fused distance follows the radius
    corr = torch.corrcoef(torch.stack([sdf[shell].double(), r[shell].double()]))[0, 1]
    assert corr > 0.9


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="density must have shape"):
        fuse_rendered_depth(torch.zeros(4, 4), [0, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="step must be positive"):
        fuse_rendered_depth(torch.zeros(4, 4, 4), [0, 0, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="silhouette_hull: density must have shape"):
        silhouette_hull(torch.zeros(4, 4, 4, 1), [0, 0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="silhouette_hull: step must be positive"):
        silhouette_hull(torch.zeros(4, 4, 4), [0, 0, 0], [-1, 1, 1])
    with pytest.raises(ValueError, match=r"MeshExportConfig.surface must be one of \('density', 'rendered', 'hull'\)"):
        MeshExportConfig(surface="depth")


def soft_ball(x, amplitude=12.0, width=0.3):
    return amplitude * torch.exp(-(x - CENTRE).square().sum(-1) / width ** 2)


def test_hull_of_a_soft_ball_has_the_size_its_renders_show():
    # A ray at distance b from the centre crosses ∫σ = A·w·√π·exp(−b²/w²); its opacity is 1/2 where that
    # is ln 2. Every view's silhouette is that disc, so the hull is the ball of radius b. The fused depth
    # of so soft a field lies well inside it (a ray from outside reaches ln 2 deeper than a chord does).
    b = 0.3 * math.sqrt(math.log(12.0 * 0.3 * math.sqrt(math.pi) / math.log(2)))
    config = MeshExportConfig(threshold=0.5, resolution=64, coarse_resolution=24, surface="hull")
    mesh = extract_mesh(Field(soft_ball), config)
    radii = np.linalg.norm(mesh.vertices - CENTRE.numpy(), axis=1)
    volume = density_volume(Field(soft_ball), config)
    voxel = float(volume.step.max())
    assert abs(radii.mean() - b) < voxel and radii.std() < voxel
    tm = mesh.to_trimesh()
    assert tm.is_watertight and len(tm.split(only_watertight=False)) == 1
    rendered = extract_mesh(Field(soft_ball), dataclasses.replace(config, surface="rendered"))
    assert np.linalg.norm(rendered.vertices - CENTRE.numpy(), axis=1).mean() < b - 3 * voxel


def open_cup(x, sigma=80.0):  # a cylinder wall and floor about the y axis, open at the top
    r, y = x[:, [0, 2]].norm(dim=-1), x[:, 1]
    wall = (r > 0.3) & (r < 0.4) & (y > -0.3) & (y < 0.3)
    floor = (r < 0.4) & (y > -0.4) & (y <= -0.3)
    return sigma * (wall | floor).float()


def test_hull_keeps_a_hole_seen_through_and_fills_a_cup():
    torus_hull = density_volume(Field(torus), MeshExportConfig(threshold=1.0, resolution=64, coarse_resolution=24,
                                                              surface="hull"))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.45, 0.0, 0.0], [0.0, 0.0, -0.45], [0.0, 0.3, 0.0]])
    assert torus_hull.occupied(points).tolist() == [False, True, True, False]  # the hole, the tube twice, above
    # Every silhouette of an open cup is solid, so its hull fills the inside (the fused depth, looking
    # in from the top, does not): the limitation the docstring states.
    config = MeshExportConfig(threshold=1.0, resolution=64, coarse_resolution=24)
    inside, wall = torch.tensor([[0.0, 0.1, 0.0]]), torch.tensor([[0.35, 0.0, 0.0]])
    cup_hull = density_volume(Field(open_cup), dataclasses.replace(config, surface="hull"))
    cup_depth = density_volume(Field(open_cup), dataclasses.replace(config, surface="rendered"))
    assert cup_hull.occupied(inside).item() and cup_hull.occupied(wall).item()
    assert not cup_depth.occupied(inside).item() and cup_depth.occupied(wall).item()


def test_hull_values_are_opacities_and_an_empty_grid_has_no_inside():
    n = 24
    axis = torch.linspace(-0.8, 0.8, n, dtype=torch.float64)
    x = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    hull = silhouette_hull(uniform_ball(x.float()).reshape(n, n, n), [-0.8] * 3, [1.6 / (n - 1)] * 3)
    assert hull.shape == (n, n, n) and hull.dtype == torch.float32
    assert hull.min() >= -0.5 and hull.max() <= 0.5 and hull.max() > 0.4  # the core: opaque in every view
    assert (silhouette_hull(torch.zeros(8, 8, 8), [0] * 3, [0.1] * 3) == -0.5).all()
