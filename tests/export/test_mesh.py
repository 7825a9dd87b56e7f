"""Mesh export: an analytic sphere meshes to the right radius and colour; floaters are removed."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mcubes", reason="PyMCubes not installed (pip install PyMCubes)")
pytest.importorskip("trimesh", reason="trimesh not installed (pip install trimesh)")

sys.path.insert(0, str(Path(__file__).parents[1] / "nerf"))
from analytic_fields import UniformSphere  # noqa: E402

from iso3d.export import MeshExportConfig, extract_mesh  # noqa: E402


class SmoothBall(torch.nn.Module):
    """Density 100·(1 − ‖x − c‖/r) inside radius r: the level set 25 is the sphere of radius 0.75 r."""

    def __init__(self, radius, center=(0.0, 0.0, 0.0), color=(0.2, 0.6, 0.9)):
        super().__init__()
        self.radius = radius
        self.register_buffer("center", torch.tensor(center))
        self.register_buffer("color", torch.tensor(color))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def density(self, x):
        return (100 * (1 - (x - self.center).norm(dim=-1) / self.radius)).clamp(min=0)

    def forward(self, x, with_normals=False):
        from iso3d.nerf import FieldOutput

        return FieldOutput(self.density(x), self.color.expand(x.shape[0], 3))


class TwoBalls(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.big = SmoothBall(0.6, (-0.1, 0, 0), (0.9, 0.1, 0.1))
        self.tiny = SmoothBall(0.08, (0.75, 0.6, 0.6), (0.1, 0.9, 0.1))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def density(self, x):
        return torch.maximum(self.big.density(x), self.tiny.density(x))

    def forward(self, x, with_normals=False):
        from iso3d.nerf import FieldOutput

        return FieldOutput(self.density(x), torch.where((self.big.density(x) > 0)[:, None], self.big.color, self.tiny.color))


def test_sphere_radius_colour_and_orientation(tmp_path):
    mesh = extract_mesh(SmoothBall(0.6), MeshExportConfig(resolution=64, coarse_resolution=24))
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert radii.mean() == pytest.approx(0.45, abs=0.01) and radii.std() < 0.01
    np.testing.assert_allclose(mesh.colors, np.tile([0.2, 0.6, 0.9], (len(mesh.colors), 1)), atol=1e-6)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.volume > 0
    assert tm.volume == pytest.approx(4 / 3 * np.pi * 0.45**3, rel=0.05)
    for ext in (".glb", ".obj", ".ply"):
        path = mesh.save(tmp_path / f"mesh{ext}")
        assert path.stat().st_size > 1000


def test_small_components_are_removed():
    mesh = extract_mesh(TwoBalls(), MeshExportConfig(resolution=96, coarse_resolution=32))
    assert np.linalg.norm(mesh.vertices - [0.75, 0.6, 0.6], axis=1).min() > 0.2, "the floater must go"
    assert (mesh.colors[:, 0] > 0.8).all()


def test_empty_field_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no density above the threshold"):
        extract_mesh(UniformSphere(sigma=1.0), MeshExportConfig(resolution=16, coarse_resolution=8))
    mesh = extract_mesh(SmoothBall(0.6), MeshExportConfig(resolution=16, coarse_resolution=8))
    with pytest.raises(ValueError, match="must be .glb, .obj or .ply"):
        mesh.save(tmp_path / "mesh.stl")


class HollowBall(torch.nn.Module):
    """Density 100 in the shell 0.3 < ‖x‖ < 0.5, 0 elsewhere: a cavity inside a solid."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def density(self, x):
        r = x.norm(dim=-1)
        return 100.0 * ((r > 0.3) & (r < 0.5)).float()

    def forward(self, x, with_normals=False):
        from iso3d.nerf import FieldOutput

        return FieldOutput(self.density(x), torch.full((x.shape[0], 3), 0.5))


def test_enclosed_cavities_are_filled():
    from iso3d.export import density_volume

    filled = extract_mesh(HollowBall(), MeshExportConfig(resolution=48, coarse_resolution=16))
    radii = np.linalg.norm(filled.vertices, axis=1)
    assert radii.min() > 0.45, "no inner surface: the cavity is filled"
    assert filled.to_trimesh().volume == pytest.approx(4 / 3 * np.pi * 0.5**3, rel=0.08)
    hollow = extract_mesh(HollowBall(), MeshExportConfig(resolution=48, coarse_resolution=16, fill_cavities=False))
    assert np.linalg.norm(hollow.vertices, axis=1).min() < 0.35  # the inner wall is meshed without filling
    volume = density_volume(HollowBall(), MeshExportConfig(resolution=48, coarse_resolution=16))
    inside = volume.occupied(torch.tensor([[0.0, 0.0, 0.0], [0.4, 0.0, 0.0], [0.0, 0.7, 0.0], [2.0, 0.0, 0.0]]))
    assert inside.tolist() == [True, True, False, False]
