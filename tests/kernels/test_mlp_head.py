"""The density head (two-layer ReLU MLP with its input gradient): Triton vs the PyTorch twin vs autograd."""

import pytest
import torch

from iso3d.kernels import BackendUnavailableError
from iso3d.kernels._mlp_head_triton import TILES
from iso3d.kernels.mlp_head import launch_head_backward, launch_head_forward, mlp_head, mlp_head_with_input_grad
from iso3d.kernels.reference import mlp_head_ref, mlp_head_with_input_grad_ref


def _inputs(n, k, hidden, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(n, k, generator=gen).to(device, dtype)
    w1 = (torch.randn(hidden, k, generator=gen) / k**0.5).to(device)
    w2 = (torch.randn(hidden, generator=gen) / hidden**0.5).to(device)
    return y, w1, w2


def _outputs_and_grads(backend, y, w1, w2, seed):
    y, w1, w2 = (t.clone().requires_grad_() for t in (y, w1, w2))
    if backend == "float64":  # the twin's formula in float64: the exact reference
        raw, v = mlp_head_with_input_grad_ref(y, w1, w2)
    else:
        raw, v = mlp_head_with_input_grad(y, w1, w2, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    draw = torch.randn(raw.shape, generator=gen).to(raw)
    dv = torch.randn(v.shape, generator=gen).to(v)
    return [raw, v, *torch.autograd.grad([raw, v], [y, w1, w2], [draw, dv])]


def _assert_error_at_most_twins(names, got, twin, exact):
    """Each kernel result's error against float64 is at most a small multiple of the twin's own."""
    for name, g, t, e in zip(names, got, twin, exact, strict=True):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        scale = 1 + e.abs().max().item()
        twin_err = (t.double() - e).abs().max().item()
        err = (g.double() - e).abs().max().item()
        assert err <= 4 * twin_err + 1e-6 * scale, f"{name}: kernel error {err:.3g}, twin's {twin_err:.3g}"


def test_twin_matches_autograd_of_the_mlp():
    # The twin's closed-form v is autograd's input gradient of the plain MLP.
    y, w1, w2 = _inputs(29, 12, 20, torch.float32, "cpu", seed=1)
    y.requires_grad_()
    raw, v = mlp_head_with_input_grad(y, w1, w2, backend="torch")
    plain = torch.relu(y @ w1.T) @ w2
    (want_v,) = torch.autograd.grad(plain.sum(), y)
    torch.testing.assert_close(raw, plain)
    torch.testing.assert_close(v, want_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n, k, hidden", [(1, 32, 64), (97, 32, 64), (300, 8, 64), (130, 12, 20), (65, 4, 3)])
def test_triton_matches_twin(n, k, hidden, dtype, device):
    # Outputs and every gradient (y, W1, w2) against the twin, and both against a float64 reference:
    # the kernel's error may be at most a small multiple of the twin's own (fp32 products; float16
    # inputs are read exactly and the gradient of y is rounded to float16 by both).
    seed = 1000 * k + n
    y, w1, w2 = _inputs(n, k, hidden, dtype, device, seed)
    got = _outputs_and_grads("triton", y, w1, w2, seed)
    twin = _outputs_and_grads("torch", y, w1, w2, seed)
    exact = _outputs_and_grads("float64", y.double(), w1.double(), w2.double(), seed)
    _assert_error_at_most_twins(["raw", "v", "dy", "dW1", "dw2"], got, twin, exact)


@pytest.mark.parametrize("tile", TILES, ids=str)
def test_every_autotuning_tile_matches_twin(tile, device):
    # Autotuning may pick any candidate on a GPU (and the tests there run the default only): check each
    # tile's kernels directly, forward and backward, with and without the fused op's extra cotangent.
    y, w1, w2 = _inputs(77, 32, 64, torch.float32, device, seed=11)
    gen = torch.Generator().manual_seed(12)
    draw, dv, dfeats = (torch.randn(*shape, generator=gen).to(device) for shape in ((77,), (77, 32), (77, 32)))
    raw, v, _ = launch_head_forward(y, w1, w2, tile=tile)
    leaves = [t.clone().requires_grad_() for t in (y, w1, w2)]
    want_raw, want_v = mlp_head_with_input_grad_ref(*leaves)
    torch.testing.assert_close(raw, want_raw.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, want_v.detach(), atol=1e-5, rtol=1e-5)
    want = torch.autograd.grad([want_raw, want_v], leaves, [draw, dv])
    for extra in (None, dfeats):
        got = launch_head_backward(y, w1, w2, draw, dv, extra, tile=tile)
        expected = [want[0] + (0 if extra is None else extra), *want[1:]]
        for g, w in zip(got, expected):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_backward_with_one_output_unused(device):
    # Only v feeds the loss: raw's cotangent arrives as None (set_materialize_grads(False)) and the
    # launcher must treat it as zero.
    y, w1, w2 = _inputs(70, 32, 64, torch.float32, device, seed=3)
    grads = []
    for backend in ("triton", "torch"):
        w1_ = w1.clone().requires_grad_()
        _, v = mlp_head_with_input_grad(y, w1_, w2, backend=backend)
        grads.append(torch.autograd.grad(v.square().sum(), w1_)[0])
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_bad_input_names_the_argument():
    y, w1, w2 = _inputs(4, 8, 16, torch.float32, "cpu", seed=0)
    with pytest.raises(ValueError, match="w1 \\[H, 8\\]"):
        mlp_head_with_input_grad(y, w1[:, :4], w2)
    with pytest.raises(TypeError, match="w1 must be float32"):
        mlp_head_with_input_grad(y, w1.double(), w2)
    with pytest.raises(ValueError, match="y must have shape"):
        mlp_head_with_input_grad(y[0], w1, w2)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        mlp_head_with_input_grad(y.tolist(), w1, w2)
    with pytest.raises(ValueError, match="backend must be"):
        mlp_head_with_input_grad(y, w1, w2, backend="cuda")


def test_refusal_lists_reasons_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    y, w1, w2 = _inputs(4, 8, 16, torch.float32, "cpu", seed=0)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        mlp_head_with_input_grad(y, w1, w2, backend="triton")


def _raw_and_grads(backend, y, w1, w2, seed):
    y, w1, w2 = (t.clone().requires_grad_() for t in (y, w1, w2))
    raw = mlp_head_ref(y, w1, w2) if backend == "float64" else mlp_head(y, w1, w2, backend=backend)
    draw = torch.randn(raw.shape, generator=torch.Generator().manual_seed(seed)).to(raw)
    return [raw, *torch.autograd.grad(raw, [y, w1, w2], draw)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("n, k, hidden", [(1, 32, 64), (97, 32, 64), (130, 12, 20), (65, 4, 3)])
def test_density_only_head_matches_twin(n, k, hidden, dtype, device):
    # mlp_head (raw alone: the kernel's WITH_V=False path) and its gradients, as above.
    seed = 7 * k + n
    y, w1, w2 = _inputs(n, k, hidden, dtype, device, seed)
    got = _raw_and_grads("triton", y, w1, w2, seed)
    twin = _raw_and_grads("torch", y, w1, w2, seed)
    exact = _raw_and_grads("float64", y.double(), w1.double(), w2.double(), seed)
    _assert_error_at_most_twins(["raw", "dy", "dW1", "dw2"], got, twin, exact)
    # the raw output is the first output of the op with the input gradient (the same kernel, v skipped;
    # autotuning may pick another tile for each, hence not bitwise)
    torch.testing.assert_close(got[0], mlp_head_with_input_grad(y, w1, w2, backend="triton")[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tile", TILES, ids=str)
def test_density_only_forward_at_every_tile(tile, device):
    y, w1, w2 = _inputs(77, 32, 64, torch.float32, device, seed=13)
    raw, v, g = launch_head_forward(y, w1, w2, tile=tile, with_v=False)
    assert v is None and g is None
    torch.testing.assert_close(raw, mlp_head_ref(y, w1, w2), atol=1e-5, rtol=1e-5)


def test_twin_is_the_fields_modules():
    # mlp_head_ref runs the ops of Linear → ReLU → Linear (no biases): the field's density keeps its values.
    from iso3d.nerf.field import _mlp

    mlp = _mlp(12, 20, 1)
    y = torch.randn(33, 12)
    assert torch.equal(mlp_head_ref(y, mlp[0].weight, mlp[2].weight[0]), mlp(y).squeeze(-1))
    with pytest.raises(ValueError, match="mlp_head: y must have shape"):
        mlp_head(torch.zeros(3), mlp[0].weight, mlp[2].weight[0])
