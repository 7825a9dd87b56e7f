"""mv_attention (Triton) against its PyTorch twin, fp64 oracle and PyTorch's own low-precision error.

Tolerance rule (flash-attention's): for every output and every gradient,
``max|kernel − fp64| ≤ 2 · max|torch_lowp − fp64| + floor``, where ``torch_lowp`` is the
materialized attention computed entirely in the working dtype (``mv_attention_naive(upcast=False)``)
and ``floor = 4·eps·√D·max(1, max|fp64|)`` is a few units of rounding of the working dtype at the
magnitude of the length-D dot products inside attention (unit-variance inputs: ~√D). It only matters
in fp32 or degenerate cases (one key: the exact dq is 0 and PyTorch's softmax backward happens to hit
it exactly), where both errors sit at rounding level.
"""

import random

import pytest
import torch

import importlib
mva = importlib.import_module("iso3d.kernels.mv_attention")  # the module, not the function it exports
from iso3d.kernels import BackendUnavailableError, mv_attention, mv_attention_naive, mv_attention_ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MODES = ["none", "full", "kv"]  # no reference / reference queries+keys+values / reference keys+values only

# (B, V, N, N_ref, H, D, mode): hand-picked edge cases — every supported head dim, odd token
# counts, N_ref != N, single object / view / token, a reference of one token.
EDGE_CASES = [
    (1, 1, 1, 0, 1, 32, "none"),
    (2, 4, 16, 16, 2, 64, "full"),
    (1, 3, 7, 5, 2, 40, "full"),
    (2, 2, 9, 1, 1, 80, "kv"),
    (1, 2, 5, 33, 1, 128, "full"),
    (3, 1, 33, 0, 2, 32, "none"),
    (1, 4, 17, 3, 1, 64, "kv"),
]


def _random_cases(seed: int, count: int):
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        mode = rng.choice(MODES)
        cases.append((
            rng.randint(1, 2), rng.randint(1, 4), rng.randint(1, 40),
            0 if mode == "none" else rng.randint(1, 40),
            rng.randint(1, 2), rng.choice([32, 40, 64, 80, 128]), mode,
        ))
    return cases


RANDOM_CASES = _random_cases(seed=2026, count=6)


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Every kernel output starts as NaN, so an element the kernels fail to write is caught."""

    def poisoned(shape, *, like, dtype=None):
        return torch.full(shape, float("nan"), device=like.device, dtype=dtype or like.dtype)

    monkeypatch.setattr(mva, "_new_buffer", poisoned)


def _make_inputs(case, dtype, device, seed):
    b, v, n, n_ref, h, d, mode = case
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)  # noqa: E731
    q, k, val = (rand(b * v, n, h * d) for _ in range(3))
    refs = {}
    if mode != "none":
        refs = {"k_ref": rand(b, n_ref, h * d), "v_ref": rand(b, n_ref, h * d)}
        if mode == "full":
            refs["q_ref"] = rand(b, n_ref, h * d)
    return (q, k, val), refs, dict(n_views=v, n_heads=h)


def _outputs_and_grads(fn, tensors, refs, kwargs, cotangent_seed, cast=None):
    """Run ``fn`` and return [outputs..., grads of every input...] with fixed random cotangents."""
    cast = cast or (lambda x: x)
    leaves = [cast(x).detach().requires_grad_() for x in tensors]
    ref_leaves = {name: cast(x).detach().requires_grad_() for name, x in refs.items()}
    out, out_ref = fn(*leaves, **ref_leaves, **kwargs)
    outs = [out] + ([out_ref] if out_ref is not None else [])
    gen = torch.Generator().manual_seed(cotangent_seed)
    cotangents = [torch.randn(o.shape, generator=gen).to(o) for o in outs]
    inputs = leaves + list(ref_leaves.values())
    grads = torch.autograd.grad(outs, inputs, grad_outputs=cotangents)
    return [o.detach() for o in outs] + list(grads)


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _check_against_oracle(case, dtype, device, seed):
    tensors, refs, kwargs = _make_inputs(case, dtype, device, seed)
    oracle = _outputs_and_grads(mv_attention_ref, tensors, refs, kwargs, seed, cast=lambda x: x.double())
    lowp = _outputs_and_grads(
        lambda *a, **kw: mv_attention_naive(*a, upcast=False, **kw), tensors, refs, kwargs, seed
    )
    kernel = _outputs_and_grads(
        lambda *a, **kw: mv_attention(*a, backend="triton", **kw), tensors, refs, kwargs, seed
    )
    names = ["out", "out_ref"][: len(kernel) - len(tensors) - len(refs)] + ["dq", "dk", "dv"] + [
        "d" + name for name in refs
    ]
    eps = torch.finfo(dtype).eps
    for name, got, want, pt in zip(names, kernel, oracle, lowp):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert torch.isfinite(got).all(), f"{name}: non-finite values (unwritten or overflow)"
        floor = 4 * eps * case[5] ** 0.5 * max(1.0, want.abs().max().item())
        bound = 2 * _max_err(pt, want) + floor
        err = _max_err(got, want)
        assert err <= bound, f"{name} {dtype} case={case}: kernel error {err:.3e} > bound {bound:.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", EDGE_CASES + RANDOM_CASES, ids=str)
def test_triton_matches_fp64_oracle(case, dtype, device):
    _check_against_oracle(case, dtype, device, seed=hash((case, str(dtype))) % 2**31)


def _loop_oracle(q, k, v, *, n_views, n_heads, q_ref=None, k_ref=None, v_ref=None, scale=None):
    # An independent, obvious formulation: loop over objects and heads, concatenate explicitly.
    n_obj, head_dim = q.shape[0] // n_views, q.shape[-1] // n_heads
    scale = scale or head_dim**-0.5
    out, out_ref = torch.empty_like(q), (torch.empty_like(q_ref) if q_ref is not None else None)
    for b in range(n_obj):
        for h in range(n_heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            views = slice(b * n_views, (b + 1) * n_views)
            flat = lambda x: x[views, :, cols].reshape(-1, head_dim)  # noqa: E731
            queries, keys, values = flat(q), flat(k), flat(v)
            if k_ref is not None:
                keys = torch.cat([keys, k_ref[b, :, cols]])
                values = torch.cat([values, v_ref[b, :, cols]])
            if q_ref is not None:
                queries = torch.cat([queries, q_ref[b, :, cols]])
            o = torch.softmax(queries @ keys.T * scale, dim=-1) @ values
            n_view_tokens = n_views * q.shape[1]
            out[views, :, cols] = o[:n_view_tokens].reshape(n_views, q.shape[1], head_dim)
            if q_ref is not None:
                out_ref[b, :, cols] = o[n_view_tokens:]
    return out, out_ref


@pytest.mark.parametrize("case", EDGE_CASES, ids=str)
def test_twin_and_naive_match_loop_oracle(case):
    tensors, refs, kwargs = _make_inputs(case, torch.float64, torch.device("cpu"), seed=7)
    want = _loop_oracle(*tensors, **refs, **kwargs, scale=0.3)
    for fn in (mv_attention_ref, mv_attention_naive):
        got = fn(*tensors, **refs, **kwargs, scale=0.3)
        for g, w in zip(got, want):
            if w is None:
                assert g is None
            else:
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_reference_block_changes_view_outputs(device):
    tensors, refs, kwargs = _make_inputs((1, 2, 8, 4, 1, 32, "kv"), torch.float32, device, seed=3)
    with_ref, _ = mv_attention(*tensors, **refs, **kwargs, backend="triton")
    without, _ = mv_attention(*tensors, **kwargs, backend="triton")
    assert (with_ref - without).abs().max() > 1e-3


def test_views_of_different_objects_do_not_mix(device):
    (q, k, v), _, kwargs = _make_inputs((2, 2, 8, 0, 1, 32, "none"), torch.float32, device, seed=4)
    out, _ = mv_attention(q, k, v, **kwargs, backend="triton")
    k2 = k.clone()
    k2[2:] += 1.0  # perturb object 1 only
    out2, _ = mv_attention(q, k2, v, **kwargs, backend="triton")
    assert torch.equal(out[:2], out2[:2])
    assert not torch.equal(out[2:], out2[2:])


def test_unused_reference_output_gets_zero_cotangent(device):
    tensors, refs, kwargs = _make_inputs((1, 2, 5, 3, 1, 32, "full"), torch.float32, device, seed=5)
    leaves = [x.requires_grad_() for x in (*tensors, *refs.values())]
    out, _ = mv_attention(*leaves[:3], **dict(zip(refs, leaves[3:])), **kwargs, backend="triton")
    got = torch.autograd.grad(out.sum(), leaves)
    out_t, _ = mv_attention_ref(*leaves[:3], **dict(zip(refs, leaves[3:])), **kwargs)
    want = torch.autograd.grad(out_t.sum(), leaves)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_custom_scale_is_used(device):
    tensors, refs, kwargs = _make_inputs((1, 2, 6, 2, 1, 32, "full"), torch.float32, device, seed=6)
    got = mv_attention(*tensors, **refs, **kwargs, scale=0.05, backend="triton")
    want = mv_attention_ref(*tensors, **refs, **kwargs, scale=0.05)
    default = mv_attention_ref(*tensors, **refs, **kwargs)
    for g, w, d in zip(got, want, default):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
        assert (g - d).abs().max() > 1e-3


def test_auto_backend_uses_twin_on_cpu(monkeypatch):
    def refuse(*args):
        raise AssertionError("auto must not launch Triton for CPU tensors")

    monkeypatch.setattr(mva._MVAttentionFunction, "apply", refuse)
    (q, k, v), _, kwargs = _make_inputs((1, 2, 4, 0, 1, 32, "none"), torch.float32, torch.device("cpu"), seed=8)
    out, _ = mv_attention(q, k, v, **kwargs)
    torch.testing.assert_close(out, mv_attention_ref(q, k, v, **kwargs)[0])


def test_explicit_triton_without_interpreter_explains_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    (q, k, v), _, kwargs = _make_inputs((1, 2, 4, 0, 1, 32, "none"), torch.float32, torch.device("cpu"), seed=9)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        mv_attention(q, k, v, **kwargs, backend="triton")
    with pytest.raises(ValueError, match="backend must be"):
        mv_attention(q, k, v, **kwargs, backend="cuda")


def test_head_dim_too_large_for_triton_is_refused(device):
    q = torch.randn(2, 4, 256, device=device)
    with pytest.raises(BackendUnavailableError, match="head_dim=256"):
        mv_attention(q, q, q, n_views=2, n_heads=1, backend="triton")
    out, _ = mv_attention(q, q, q, n_views=2, n_heads=1)  # auto falls back to the twin
    assert out.shape == q.shape


def test_double_backward_is_refused(device):
    q = torch.randn(2, 4, 32, dtype=torch.float64).float().to(device).requires_grad_()
    out, _ = mv_attention(q, q, q, n_views=2, n_heads=1, backend="triton")
    (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(g.sum(), q)


GOOD = dict(q=torch.zeros(4, 5, 64), k=torch.zeros(4, 5, 64), v=torch.zeros(4, 5, 64))


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(q=[[0.0]]), TypeError, "q must be a torch.Tensor"),
        (dict(k=torch.zeros(4, 6, 64)), ValueError, "k must have q's shape"),
        (dict(v=torch.zeros(4, 5, 64, dtype=torch.float16)), TypeError, "v has dtype"),
        (dict(q=torch.zeros(4, 5, 64, dtype=torch.int32)), TypeError, "q must be float32"),
        (dict(q=torch.zeros(4, 64)), ValueError, "q must be 3-D"),
        (dict(q=torch.zeros(4, 0, 64), k=torch.zeros(4, 0, 64), v=torch.zeros(4, 0, 64)), ValueError, "at least one"),
        (dict(n_views=3), ValueError, "not divisible by n_views=3"),
        (dict(n_heads=3), ValueError, "not divisible by n_heads=3"),
        (dict(n_heads=0), ValueError, "n_heads must be >= 1"),
        (dict(n_views=2.0), TypeError, "n_views must be an int"),
        (dict(k_ref=torch.zeros(2, 3, 64)), ValueError, "k_ref and v_ref must be given together"),
        (dict(q_ref=torch.zeros(2, 3, 64)), ValueError, "q_ref needs k_ref"),
        (dict(k_ref=torch.zeros(3, 3, 64), v_ref=torch.zeros(3, 3, 64)), ValueError, r"k_ref must have shape \[B=2"),
        (dict(k_ref=torch.zeros(2, 3, 64), v_ref=torch.zeros(2, 4, 64)), ValueError, "v_ref must have k_ref's shape"),
        (dict(k_ref=torch.zeros(2, 3, 64), v_ref=torch.zeros(2, 3, 64, dtype=torch.float16)), TypeError, "v_ref has dtype"),
        (dict(scale=-1.0), ValueError, "scale must be a positive"),
    ],
)
def test_bad_inputs_name_the_argument(change, error, match):
    kwargs = dict(GOOD, n_views=2, n_heads=2, **{})
    kwargs.update(change)
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(error, match=match):
        mv_attention(q, k, v, **kwargs)


def test_device_mismatch_is_refused():
    q = torch.zeros(2, 3, 32)
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        mv_attention(q, q.to("meta"), q, n_views=1, n_heads=1)
