"""Camera conventions: hand-computed poses and embeddings, rays, the SDS view sampler."""

import math

import pytest
import torch

from iso3d.cameras import SDSViewConfig, camera_embedding, camera_to_world, generate_rays, sample_sds_views

S3 = math.sqrt(3) / 2


@pytest.mark.parametrize(
    "elevation, azimuth, expected",
    [
        # e=0, a=0: camera on +z; OpenGL columns [right, up, back | p] = identity with p=(0,0,1);
        # then rows (r0, −r2, r1, r3) from the y/z swap.
        (0.0, 0.0, [1, 0, 0, 0, 0, 0, -1, -1, 0, 1, 0, 0, 0, 0, 0, 1]),
        # e=0, a=90: camera on +x; right=(0,0,−1), up=(0,1,0), back=(1,0,0).
        (0.0, 90.0, [0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]),
        # e=30, a=0: back=(0,½,√3/2), right=(1,0,0), up=(0,√3/2,−½).
        (30.0, 0.0, [1, 0, 0, 0, 0, 0.5, -S3, -S3, 0, S3, 0.5, 0.5, 0, 0, 0, 1]),
    ],
)
def test_embedding_matches_hand_computed_values(elevation, azimuth, expected):
    got = camera_embedding(torch.tensor([elevation]), torch.tensor([azimuth]))
    torch.testing.assert_close(got, torch.tensor([expected], dtype=torch.float32), atol=1e-6, rtol=0)


def test_release_convention_converts_degrees_twice():
    got = camera_embedding(torch.tensor([0.0]), torch.tensor([90.0]), convention="isotropic3d-release")
    a = math.radians(90.0) * math.pi / 180  # 0.0274 rad, the release's effective azimuth
    back = [math.sin(a), 0.0, math.cos(a)]
    c2w = got.view(4, 4)
    # The swap maps (x, y, z) -> (x, −z, y): the back column becomes (sin a, −cos a, 0).
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([back[0], -back[2], back[1]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="convention must be"):
        camera_embedding(torch.tensor([0.0]), torch.tensor([0.0]), convention="mvdream")


def test_camera_to_world_is_a_rigid_look_at():
    elevation = torch.tensor([0.0, 20.0, -10.0, 89.0, 90.0])
    azimuth = torch.tensor([0.0, 135.0, 300.0, 45.0, 10.0])
    c2w = camera_to_world(elevation, azimuth, torch.tensor([1.0, 2.0, 3.0, 1.5, 2.0]))
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(5, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(5), atol=1e-5, rtol=0)
    # The viewing direction −back points at the origin.
    view = -c2w[:, :3, 2]
    to_origin = -c2w[:, :3, 3] / c2w[:, :3, 3].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(view, to_origin, atol=1e-5, rtol=0)


def test_centre_rays_hit_the_origin():
    c2w = camera_to_world(torch.tensor([15.0]), torch.tensor([30.0]), torch.tensor([2.0]))
    rays_o, rays_d = generate_rays(c2w, torch.tensor([40.0]), 2, 2)
    centre = rays_d[0].mean(dim=(0, 1))
    torch.testing.assert_close(rays_o[0, 0, 0] + 2.0 * centre / centre.norm(), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(rays_d.norm(dim=-1), torch.ones(1, 2, 2))
    # Pixel (0, 0) is the top-left: up and to the left of the centre in camera space.
    cam_dir = c2w[0, :3, :3].T @ rays_d[0, 0, 0]
    assert cam_dir[0] < 0 and cam_dir[1] > 0 and cam_dir[2] < 0


def test_sds_views_follow_the_official_ranges():
    cfg = SDSViewConfig()
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        views = sample_sds_views(cfg, batch=2, generator=gen)
        assert views.c2w.shape == (8, 4, 4)
        az = views.azimuth.view(2, 4)
        gaps = (az.roll(-1, dims=1) - az) % 360
        torch.testing.assert_close(gaps, torch.full((2, 4), 90.0), atol=1e-3, rtol=0)
        assert ((views.elevation >= 0) & (views.elevation <= 30.0001)).all()
        assert ((views.fovy >= 15) & (views.fovy <= 60)).all()
        d = views.distance * torch.tan(torch.deg2rad(views.fovy) / 2)
        assert ((d >= 0.8 - 1e-5) & (d <= 1.0 + 1e-5)).all()
        torch.testing.assert_close(views.c2w[:, :3, 3].norm(dim=-1), views.distance)


def test_bad_camera_inputs():
    with pytest.raises(ValueError, match="elevation and azimuth must be 1-D"):
        camera_to_world(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"c2w must have shape \[B, 4, 4\]"):
        generate_rays(torch.zeros(4, 4), torch.tensor([40.0]), 2, 2)
