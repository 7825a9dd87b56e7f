"""x0-reconstruction SDS loss: arithmetic, gradient, std rescale; the annealed timestep schedule."""

import pytest
import torch

from iso3d.sds import TimestepSchedule, x0_reconstruction_loss


def _setup(frames=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(frames, 3, 4, 4, generator=gen).requires_grad_()
    eps = torch.randn(frames, 3, 4, 4, generator=gen)
    a = torch.tensor(0.6)
    x_t = a.sqrt() * z.detach() + (1 - a).sqrt() * eps
    return z, x_t, a, eps, gen


def test_perfect_prediction_gives_zero_loss_and_gradient():
    z, x_t, a, eps, _ = _setup()
    loss = x0_reconstruction_loss(z, x_t, a, eps, eps, n_views=4, guidance_scale=10.0, recon_std_rescale=0.5)
    assert loss.item() == pytest.approx(0.0, abs=1e-9)


def test_gradient_is_z_minus_x0_over_frames():
    z, x_t, a, eps, gen = _setup()
    eps_c = eps + 0.1 * torch.randn(eps.shape, generator=gen)
    eps_u = eps + 0.1 * torch.randn(eps.shape, generator=gen)
    loss = x0_reconstruction_loss(z, x_t, a, eps_c, eps_u, n_views=4, guidance_scale=3.0, recon_std_rescale=0.0)
    (grad,) = torch.autograd.grad(loss, z)
    eps_hat = eps_u + 3.0 * (eps_c - eps_u)
    x0 = (x_t - (1 - a).sqrt() * eps_hat) / a.sqrt()
    torch.testing.assert_close(grad, (z.detach() - x0) / z.shape[0])
    torch.testing.assert_close(loss, 0.5 * ((z.detach() - x0) ** 2).sum() / z.shape[0])


def test_std_rescale_matches_unguided_spread_per_object():
    z, x_t, a, eps, gen = _setup()
    eps_c = torch.randn(eps.shape, generator=gen)
    eps_u = torch.randn(eps.shape, generator=gen)
    # r = 1: x0 is rescaled so each object's std equals the un-guided prediction's std.
    z0 = torch.zeros_like(z, requires_grad=True)
    loss = x0_reconstruction_loss(z0, x_t, a, eps_c, eps_u, n_views=4, guidance_scale=10.0, recon_std_rescale=1.0)
    (grad,) = torch.autograd.grad(loss, z0)
    x0 = -grad * z.shape[0]
    x0_c = (x_t - (1 - a).sqrt() * eps_c) / a.sqrt()
    for obj in range(2):
        sl = slice(4 * obj, 4 * obj + 4)
        assert x0[sl].std().item() == pytest.approx(x0_c[sl].std().item(), rel=1e-4)


def test_bad_shapes():
    z, x_t, a, eps, _ = _setup()
    with pytest.raises(ValueError, match="share a shape"):
        x0_reconstruction_loss(z, x_t[:4], a, eps, eps, n_views=4, guidance_scale=1, recon_std_rescale=0)
    with pytest.raises(ValueError, match="not a multiple of n_views=3"):
        x0_reconstruction_loss(z, x_t, a, eps, eps, n_views=3, guidance_scale=1, recon_std_rescale=0)


def test_timestep_schedule_anneals_as_the_release():
    s = TimestepSchedule()
    assert s.range_at(0) == pytest.approx((0.98, 0.98))
    assert s.range_at(4000) == pytest.approx((0.5, 0.74))
    assert s.range_at(8000) == pytest.approx((0.02, 0.50))
    assert s.range_at(10000) == pytest.approx((0.02, 0.50))
    gen = torch.Generator().manual_seed(0)
    ts = [s.sample(9000, gen) for _ in range(200)]
    assert 20 <= min(ts) and max(ts) <= 500
