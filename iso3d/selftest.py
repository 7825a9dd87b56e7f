"""``iso3d selftest``: run every kernel once against its PyTorch twin on this machine.

On a GPU the kernels run natively; on a CPU through Triton's interpreter (this sets
``TRITON_INTERPRET=1`` for the process before the kernels are loaded).
"""

from __future__ import annotations

import os
import time

import torch

__all__ = ["run_selftest"]


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def run_selftest(seed: int = 0) -> list[tuple[str, float, float, bool]]:
    """Return ``(check, error, bound, ok)`` rows; the bound is 2× PyTorch's fp16 error, plus rounding."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from iso3d.kernels import mv_attention, mv_attention_naive, mv_attention_ref

    gen = torch.Generator().manual_seed(seed)
    b, v, n, n_ref, h, d = 1, 4, 24, 24, 2, 64  # a miniature of UNet level 1 with the EMA reference block
    shapes = {"q": (b * v, n, h * d), "k": (b * v, n, h * d), "v": (b * v, n, h * d),
              "q_ref": (b, n_ref, h * d), "k_ref": (b, n_ref, h * d), "v_ref": (b, n_ref, h * d)}
    base = {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}
    rows = []
    for dtype in (torch.float32, torch.float16):
        inputs = {name: x.to(device, dtype).requires_grad_() for name, x in base.items()}
        wide = {name: x.detach().double().requires_grad_() for name, x in base.items()}

        def run(fn, tensors, **kw):
            outs = fn(tensors["q"], tensors["k"], tensors["v"], n_views=v, n_heads=h,
                      q_ref=tensors["q_ref"], k_ref=tensors["k_ref"], v_ref=tensors["v_ref"], **kw)
            grads = torch.autograd.grad(sum((o.float() ** 2).sum() for o in outs), list(tensors.values()))
            return [o.detach().cpu() for o in outs] + [g.cpu() for g in grads]

        t0 = time.perf_counter()
        got = run(mv_attention, inputs, backend="triton")
        seconds = time.perf_counter() - t0
        want = run(mv_attention_ref, wide)
        lowp = run(mv_attention_naive, inputs, upcast=False)
        err = max(_max_err(g, w) for g, w in zip(got, want))
        bound = 2 * max(_max_err(p, w) for p, w in zip(lowp, want)) + 1e-5
        rows.append((f"mv_attention fwd+bwd {str(dtype)[6:]} ({seconds:.1f}s)", err, bound, err <= bound))
    rows.append(_hash_grid_check(device, gen))
    rows.append(_hash_grid_jacobian_check(device, gen))
    rows.append(_mlp_head_check(device, gen))
    rows.append(_density_gradient_check(device, gen))
    return rows


def _hash_grid_check(device, gen):
    from iso3d.kernels.hash_grid import TOLERANCES, HashGridConfig, hash_grid_encode

    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=12)  # dense and hashed levels
    table = (torch.rand(cfg.n_params, generator=gen) * 2 - 1).to(device)
    x = torch.rand(500, 3, generator=gen).to(device)
    cot = torch.randn(500, cfg.n_output_dims, generator=gen).to(device)
    outs = []
    t0 = time.perf_counter()
    for backend in ("triton", "torch"):
        tab = table.clone().requires_grad_()
        y = hash_grid_encode(x, tab, cfg, backend=backend)
        (g,) = torch.autograd.grad(y, tab, cot)
        outs.append((y.detach().cpu(), g.cpu()))
    err = max(_max_err(a, b) for a, b in zip(*outs))
    tol = TOLERANCES[torch.float32]
    bound = tol["atol"] + tol["rtol"] * max(o.abs().max().item() for o in outs[1])
    return (f"hash_grid fwd+bwd float32 ({time.perf_counter() - t0:.1f}s)", err, bound, err <= bound)


def _hash_grid_jacobian_check(device, gen):
    """Features + Jacobian (the analytic normals' op) and its backward to table and points."""
    from iso3d.kernels.hash_grid import TOLERANCES, HashGridConfig, hash_grid_encode_with_jacobian

    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=12)
    table = (torch.rand(cfg.n_params, generator=gen) * 2 - 1).to(device)
    x = torch.rand(500, 3, generator=gen).to(device)
    dy = torch.randn(500, cfg.n_output_dims, generator=gen).to(device)
    djac = torch.randn(500, cfg.n_output_dims, 3, generator=gen).to(device)
    outs = []
    t0 = time.perf_counter()
    for backend in ("triton", "torch"):
        tab, xs = table.clone().requires_grad_(), x.clone().requires_grad_()
        y, jac = hash_grid_encode_with_jacobian(xs, tab, cfg, backend=backend)
        grads = torch.autograd.grad([y, jac], [tab, xs], [dy, djac])
        outs.append([t.detach().cpu() for t in (y, jac, *grads)])
    # J and its gradients scale with the finest level's scale: bound relative to each tensor's size.
    rtol = TOLERANCES[torch.float32]["rtol"] * 10
    errs = [_max_err(a, b) / (1 + b.abs().max().item()) for a, b in zip(*outs)]
    return (f"hash_grid+jacobian fwd+bwd float32, error relative to size ({time.perf_counter() - t0:.1f}s)",
            max(errs), rtol, max(errs) <= rtol)


def _mlp_head_check(device, gen):
    """The density head (MLP value + input gradient) and its backward, against the float64 twin;
    the bound is 4x the float32 twin's own error (the kernel computes in fp32), plus rounding."""
    from iso3d.kernels.mlp_head import mlp_head_with_input_grad
    from iso3d.kernels.reference import mlp_head_with_input_grad_ref

    y = torch.randn(500, 32, generator=gen)
    w1, w2 = torch.randn(64, 32, generator=gen) / 32**0.5, torch.randn(64, generator=gen) / 8
    draw, dv = torch.randn(500, generator=gen), torch.randn(500, 32, generator=gen)

    def run(fn, dtype, dev, **kw):
        ins = [t.to(dev, dtype).requires_grad_() for t in (y, w1, w2)]
        raw, v = fn(*ins, **kw)
        grads = torch.autograd.grad([raw, v], ins, [draw.to(raw), dv.to(v)])
        return [t.detach().cpu() for t in (raw, v, *grads)]

    t0 = time.perf_counter()
    got = run(mlp_head_with_input_grad, torch.float32, device, backend="triton")
    seconds = time.perf_counter() - t0
    want = run(mlp_head_with_input_grad_ref, torch.float64, "cpu")
    twin = run(mlp_head_with_input_grad_ref, torch.float32, "cpu")
    err = max(_max_err(g, w) for g, w in zip(got, want))
    bound = 4 * max(_max_err(t, w) for t, w in zip(twin, want)) + 1e-6
    return (f"mlp_head fwd+bwd float32 ({seconds:.1f}s)", err, bound, err <= bound)


def _density_gradient_check(device, gen):
    """The fused density op (grid + head + ∂raw/∂x, analytic normals) and its backward vs the twin."""
    from iso3d.kernels.density_gradient import hash_grid_density_with_gradient
    from iso3d.kernels.hash_grid import TOLERANCES, HashGridConfig

    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=12)
    table = (torch.rand(cfg.n_params, generator=gen) * 2 - 1).to(device)
    x = torch.rand(500, 3, generator=gen).to(device)
    w1, w2 = (torch.randn(64, cfg.n_output_dims, generator=gen) / 4).to(device), (torch.randn(64, generator=gen) / 8).to(device)
    cots = [torch.randn(500, cfg.n_output_dims, generator=gen), torch.randn(500, generator=gen), torch.randn(500, 3, generator=gen)]
    outs = []
    t0 = time.perf_counter()
    for backend in ("triton", "torch"):
        leaves = [t.clone().requires_grad_() for t in (x, table, w1, w2)]
        got = hash_grid_density_with_gradient(leaves[0], leaves[1], cfg, *leaves[2:], backend=backend)
        grads = torch.autograd.grad(got, leaves, [c.to(device) for c in cots])
        outs.append([t.detach().cpu() for t in (*got, *grads)])
    rtol = TOLERANCES[torch.float32]["rtol"] * 10  # J scales with the finest level: relative to size, as above
    errs = [_max_err(a, b) / (1 + b.abs().max().item()) for a, b in zip(*outs)]
    return (f"density+gradient fused fwd+bwd float32, error relative to size ({time.perf_counter() - t0:.1f}s)",
            max(errs), rtol, max(errs) <= rtol)
