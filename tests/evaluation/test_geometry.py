"""3D metrics on shapes whose answers are known."""

import math

import pytest
import torch

from iso3d.evaluation import Alignment, align, chamfer_distance, normalization, volume_iou
from iso3d.evaluation.geometry import matched_fovy, occupancy_silhouette


def _box_surface(n=3000, half=(0.5, 0.25, 0.125), seed=0):
    """Points on the surface of an axis-aligned box (asymmetric, so its azimuth is recoverable)."""
    gen = torch.Generator().manual_seed(seed)
    p = (torch.rand(n, 3, generator=gen) * 2 - 1) * torch.tensor(half)
    axis = torch.randint(0, 3, (n,), generator=gen)
    sign = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    p[torch.arange(n), axis] = sign * torch.tensor(half)[axis]
    return p


def test_chamfer_is_zero_on_identical_sets_and_the_shift_on_shifted_ones():
    a = torch.randn(500, 3)
    assert chamfer_distance(a, a) == 0.0
    single = torch.zeros(1, 3)
    assert chamfer_distance(single, single + torch.tensor([0.3, 0.0, 0.0])) == pytest.approx(0.6)  # 0.3 each way


def test_normalization_of_a_box():
    box = _box_surface()
    center, rms = normalization(box + torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(center, torch.tensor([1.0, 2.0, 3.0]), atol=2e-2, rtol=0)
    assert rms == pytest.approx(float(box.square().sum(-1).mean().sqrt()), rel=1e-2)
    turned = Alignment(torch.zeros(3), torch.zeros(3), 1.0, 37.0)(box)
    assert normalization(turned)[1] == pytest.approx(normalization(box)[1], rel=1e-5)  # invariant to turns
    with pytest.raises(ValueError, match="points must have shape"):
        normalization(torch.zeros(0, 3))


@pytest.mark.parametrize("azimuth", [0.0, 60.0, 135.0])
def test_align_recovers_a_similarity_transform(azimuth):
    truth = _box_surface()
    known = Alignment(torch.zeros(3), torch.tensor([0.1, -0.2, 0.05]), 1.7, azimuth)
    generated = known(_box_surface(seed=1))  # other samples of the same surface
    found, chamfer = align(truth, generated, n_azimuths=24)
    # A box is symmetric under a half turn, so azimuth is found modulo 180°.
    assert (found.azimuth - azimuth) % 180 == pytest.approx(0.0, abs=1e-6) or (found.azimuth - azimuth) % 180 == pytest.approx(180.0, abs=1e-6)
    assert found.scale == pytest.approx(1.7, rel=1e-2)
    other = _box_surface(seed=1)
    noise = chamfer_distance(truth / normalization(truth)[1], other / normalization(other)[1])  # sampling alone
    assert chamfer <= 1.05 * noise
    # A wrong turn of 90° gives a clearly larger distance.
    wrong = Alignment(found.true_center, found.gen_center, found.scale, found.azimuth + 90)
    _, gen_half = normalization(generated)
    gc = found.gen_center
    assert chamfer_distance((wrong(truth) - gc) / gen_half, (generated - gc) / gen_half) > 4 * chamfer


def test_alignment_moves_cameras_like_points():
    a = Alignment(torch.tensor([0.1, 0.0, 0.0]), torch.tensor([0.0, 0.2, 0.0]), 2.0, 30.0)
    c2w = torch.eye(4)[None].clone()
    c2w[0, :3, 3] = torch.tensor([0.0, 0.0, 2.0])
    moved = a.camera(c2w)
    torch.testing.assert_close(moved[0, :3, 3], a(c2w[0, :3, 3]))
    r = moved[0, :3, :3]
    torch.testing.assert_close(r @ r.T, torch.eye(3), atol=1e-6, rtol=0)  # still a rotation
    torch.testing.assert_close(moved[0, :3, 2], torch.tensor([math.sin(math.radians(30)), 0.0, math.cos(math.radians(30))]),
                               atol=1e-6, rtol=0)


def test_volume_iou_of_spheres():
    ball = lambda r: (lambda x: x.norm(dim=-1) < r)  # noqa: E731
    identity = Alignment(torch.zeros(3), torch.zeros(3), 1.0, 0.0)
    assert volume_iou(ball(0.5), ball(0.5), identity, 0.5) == pytest.approx(1.0)
    # Radius 0.4 inside 0.5: IoU = (0.4/0.5)^3 = 0.512, up to the grid's discretization.
    assert volume_iou(ball(0.5), ball(0.4), identity, 0.5, resolution=48) == pytest.approx(0.512, abs=0.03)
    far = Alignment(torch.zeros(3), torch.tensor([5.0, 0.0, 0.0]), 1.0, 0.0)
    assert volume_iou(ball(0.5), ball(0.5), far, 0.5) == 0.0
    # Scale maps the true cube onto the generated shape: a ball twice as large, scale 2, IoU 1.
    assert volume_iou(ball(0.5), ball(1.0), Alignment(torch.zeros(3), torch.zeros(3), 2.0, 0.0), 0.5) == pytest.approx(1.0)


def test_view_camera_keeps_the_true_distance():
    a = Alignment(torch.tensor([0.1, 0.0, 0.0]), torch.tensor([0.0, 0.2, 0.0]), 0.4, 30.0)
    c2w = torch.eye(4)[None].clone()
    c2w[0, :3, 3] = torch.tensor([0.1, 0.0, 2.0])  # 2 from the true centre
    moved = a.view_camera(c2w)
    assert float((moved[0, :3, 3] - a.gen_center).norm()) == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(moved[0, :3, :3], a.camera(c2w)[0, :3, :3])  # same turn as the scaled camera


@pytest.mark.parametrize("gen_radius", [0.2, 0.55, 0.9])
def test_matched_fovy_equalizes_silhouettes(gen_radius):
    """A sphere of another size, zoomed to the matched field of view, covers the true sphere's pixels."""
    from iso3d.cameras import camera_to_world
    from iso3d.data import RenderSettings
    from iso3d.data.procedural import Primitive, ProceduralObject, render_object_from

    sphere = lambda r: ProceduralObject([Primitive("sphere", torch.zeros(3), torch.eye(3), torch.tensor([r]),  # noqa: E731
                                                   torch.tensor([0.8, 0.3, 0.2]))])
    c2w = camera_to_world(torch.tensor([10.0, 20.0]), torch.tensor([0.0, 90.0]), torch.full((2,), 2.0))
    alpha = lambda r, fovy: render_object_from(sphere(r), c2w, RenderSettings(image_size=48, fovy=fovy))[:, 3]  # noqa: E731
    true_alpha = alpha(0.4, 40.0)
    probe_fovy = math.degrees(2 * math.atan(2 * math.tan(math.radians(20.0))))
    fovy = matched_fovy(40.0, true_alpha, alpha(gen_radius, probe_fovy), probe_fovy=probe_fovy)
    assert (fovy > 40.0) == (gen_radius > 0.4)
    # Up to pixel quantization at 48² (and perspective: the sphere's silhouette is not exactly ∝ r²).
    assert float(alpha(gen_radius, fovy).sum()) == pytest.approx(float(true_alpha.sum()), rel=0.06)


def test_matched_fovy_edge_cases():
    assert matched_fovy(40.0, torch.zeros(4, 8, 8), torch.ones(4, 8, 8)) == 40.0  # empty truth: unchanged
    assert matched_fovy(40.0, torch.ones(4, 8, 8), torch.zeros(4, 8, 8)) == 40.0  # empty render: unchanged
    assert matched_fovy(40.0, torch.ones(10), torch.ones(10)) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="fovy"):
        matched_fovy(0.0, torch.ones(1), torch.ones(1))


def test_novel_views_register_off_centre_objects():
    """Two spheres of other sizes and centres: after the alignment and the zoom, the generated views'
    silhouettes lie on the true ones (the zoom scales each image about its object's centre)."""
    pytest.importorskip("mcubes", reason="PyMCubes not installed (pip install PyMCubes)")
    from iso3d.data import RenderSettings
    from iso3d.data.procedural import Primitive, ProceduralObject
    from iso3d.evaluation.compare import _ProceduralAsset, _view_pair

    def sphere(center, r):
        return _ProceduralAsset(ProceduralObject([Primitive("sphere", torch.tensor(center), torch.eye(3),
                                                            torch.tensor([r]), torch.tensor([0.8, 0.3, 0.2]))]), 1024)

    truth, generated = sphere((0.15, 0.1, -0.1), 0.3), sphere((-0.2, 0.05, 0.1), 0.5)
    alignment, _ = align(truth.vertices, generated.vertices)
    views = {"elevation": torch.tensor([0.0, 10.0, 20.0, 30.0]), "azimuth": torch.tensor([0.0, 90.0, 180.0, 270.0])}
    true_rgba, gen_rgba, _, fovy = _view_pair(truth, generated, alignment, views, RenderSettings(image_size=48))
    assert fovy > 40.0  # the larger sphere is zoomed out
    a, b = true_rgba[:, 3] > 0.5, gen_rgba[:, 3] > 0.5
    iou = float((a & b).sum() / (a | b).sum())
    assert iou > 0.9, iou


def test_occupancy_silhouette_of_a_ball_is_its_disc():
    # Parallel rays on a 64² grid over [−1, 1]²: a ball of radius 0.5 covers π·0.25 / 4 of them.
    u = torch.linspace(-1, 1, 64)
    xy = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1)
    rays_o = torch.cat([xy, torch.full((64, 64, 1), 3.0)], -1)
    rays_d = torch.tensor([0.0, 0.0, -1.0]).expand(64, 64, 3)
    hit = occupancy_silhouette(lambda x: x.norm(dim=-1) < 0.5, rays_o, rays_d, radius=1.0)
    assert hit.shape == (64, 64) and hit.dtype == torch.bool
    assert float(hit.float().mean()) == pytest.approx(math.pi * 0.25 / 4, rel=0.05)
    assert not occupancy_silhouette(lambda x: x.norm(dim=-1) < 0.5, rays_o + 2.0, rays_d, radius=1.0).any()
    with pytest.raises(ValueError, match="rays_o and rays_d must both have shape"):
        occupancy_silhouette(lambda x: x[:, 0] > 0, rays_o, rays_d[..., :2], radius=1.0)
