"""Compile every Triton kernel of iso3d for a GPU target, on any machine (no GPU needed).

Triton's interpreter, which runs the kernel tests on CPU, accepts code that the compiler rejects
(a global that is not a ``tl.constexpr`` instance, a constexpr reassigned in an unrolled loop…).
This module records the launches the public ops make instead of running them, turns each into a
signature and constants, and runs Triton's whole pipeline (TTIR → TTGIR → LLVM → PTX → cubin with
ptxas) for the target, for every dtype, reference mode and autotuning tile.

Run it in a process where ``TRITON_INTERPRET`` is unset (the interpreter swaps the kernels for
Python functions); tests/kernels/test_compile.py does so in a subprocess:

    python -m iso3d.kernels.compile_check            # sm_90 (H100/H200)
    python -m iso3d.kernels.compile_check --arch 80  # A100

It does not check what only a launch can: shared memory against the device's limit, or results.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import torch

_PTR_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.int32: "*i32",
              torch.int64: "*i64"}


@dataclass
class _Launch:
    kernel: object  # JITFunction or Autotuner
    args: tuple
    kwargs: dict


@dataclass
class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kwargs)`` is recorded, not run."""

    kernel: object
    launches: list = field(default_factory=list)

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.launches.append(_Launch(self.kernel, args, kwargs))

        return record


def _signature(jit, args: tuple, kwargs: dict, extra_consts: dict) -> tuple[dict, dict]:
    bound = {p.name: p.default for p in jit.params if p.has_default}
    bound.update(zip(jit.arg_names, args))
    bound.update(kwargs)
    bound.update(extra_consts)
    signature, constants = {}, {}
    for p in jit.params:
        value = bound[p.name]
        if p.is_constexpr:
            signature[p.name], constants[p.name] = "constexpr", value
        elif torch.is_tensor(value):
            signature[p.name] = _PTR_TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[p.name] = "i1"
        elif isinstance(value, int) and value == 1 and not p.do_not_specialize:
            # as a launch does (Triton's specialize_impl): an int equal to 1 becomes the constant 1, so
            # `(A * B).to(...)` of two such arguments would fail to compile on a GPU, not here
            signature[p.name], constants[p.name] = "constexpr", 1
        elif isinstance(value, int):
            signature[p.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{jit.fn.__name__}: cannot type argument {p.name}={value!r}")
    return signature, constants


def _compile(launch: _Launch, tile, arch: int) -> str:
    """Compile one launch (``tile``: an autotuned kernel's ``triton.Config``, or the mv_attention
    tuple ``(BLOCK_M, BLOCK_N, warps, stages)``); returns ptxas' register and spill report, and
    :func:`ptx_report`'s barriers and ordered atomics."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.autotuner import Autotuner

    jit, extra, options = launch.kernel, {}, {}
    if isinstance(jit, Autotuner):
        jit = jit.fn
        if isinstance(tile, triton.Config):
            extra, options = dict(tile.kwargs), {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
        else:
            bm, bn, warps, stages = tile
            extra, options = {"BLOCK_M": bm, "BLOCK_N": bn}, {"num_warps": warps, "num_stages": stages}
    if "num_warps" in launch.kwargs:  # a launch option, not a kernel argument
        options.setdefault("num_warps", launch.kwargs["num_warps"])
    signature, constants = _signature(jit, launch.args, launch.kwargs, extra)
    compiled = triton.compile(ASTSource(fn=jit, signature=signature, constexprs=constants),
                              target=GPUTarget("cuda", arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    return ", ".join(filter(None, [resource_report(ptx, arch), ptx_report(ptx)]))


def ptx_report(ptx: str) -> str:
    """``"barriers B"``, plus ``", ordered atomics N"`` for a kernel with atomics.

    Barriers (``bar.sync``) mostly come from layout conversions through shared memory: the hash-grid
    kernels have 31 to 79. Fewer is not faster by itself: the F = 2 lanes that removed them all made the
    official SDS step 1.13-1.30x slower on an H100 and were reverted (benchmarks/RESULTS.md, eighteenth
    session). Ordered atomics: ``tl.atomic_add``'s default
    ``sem="acq_rel"`` becomes ``atom.acq_rel``, which ptxas surrounds with a ``MEMBAR.ALL.GPU`` and an
    L1 invalidation (``CCTL.IVALL``) for every atomic; a sum read after the kernel needs
    ``sem="relaxed"`` (``red.relaxed``)."""
    import re

    barriers = re.findall(r"\bbar(?:rier)?\.sync\b", ptx)
    report = f"barriers {len(barriers)}"
    ops = re.findall(r"^\s*(?:@!?%p\d+\s+)?((?:atom|red)\.[\w.]+)", ptx, flags=re.MULTILINE)
    if ops:
        ordered = [op for op in ops if re.search(r"\.(acq_rel|acquire|release|sc)\b", op)]
        report += f", ordered atomics {len(ordered)}"
    return report


def resource_report(ptx: str, arch: int) -> str:
    """``"regs N, spill S B"`` from ``ptxas -v`` (Triton's own ptxas for the arch); "" if unavailable.

    Spills (local-memory stores per thread) are what made the first fused density kernel 2.9× slower:
    they are worth a look before any GPU time is spent."""
    import re
    import subprocess
    import tempfile

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(arch).path
    except (ImportError, AttributeError):
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/kernel.ptx"
        with open(path, "w") as f:
            f.write(ptx)
        suffix = "a" if arch >= 90 else ""
        out = subprocess.run([ptxas, f"-arch=sm_{arch}{suffix}", "-v", path, "-o", f"{tmp}/kernel.cubin"],
                             capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", out.stderr)
    spill = re.search(r"(\d+) bytes spill stores", out.stderr)
    if not regs or not spill:
        return ""
    return f"regs {regs.group(1)}, spill {spill.group(1)} B"


def _record_mv_attention(dtype: torch.dtype, mode: str) -> list[_Launch]:
    from . import _mv_attention_triton as tk
    from .mv_attention import _mv_attention_bwd, _mv_attention_fwd

    names = ["_mv_attn_fwd_kernel", "_bwd_delta_kernel", "_mv_attn_bwd_dkdv_kernel", "_mv_attn_bwd_dq_kernel"]
    originals = {n: getattr(tk, n) for n in names}
    recorders = {n: _Recorder(k) for n, k in originals.items()}
    objects, views, tokens, heads, head_dim = 1, 4, 24, 2, 64
    make = lambda *s: torch.randn(*s).to(dtype)  # noqa: E731
    q, k, v = (make(objects * views, tokens, heads * head_dim) for _ in range(3))
    ref = {"none": (None, None, None), "full": tuple(make(objects, tokens, heads * head_dim) for _ in range(3))}
    ref["kv"] = (None, *ref["full"][1:])
    q_ref, k_ref, v_ref = ref[mode]
    try:
        for n, r in recorders.items():
            setattr(tk, n, r)
        out, out_ref, lse = _mv_attention_fwd(q, k, v, q_ref, k_ref, v_ref, views, heads, 0.125)
        _mv_attention_bwd(out, out_ref, q, k, v, q_ref, k_ref, v_ref, out, out_ref, lse, views, heads, 0.125)
    finally:
        for n, kernel in originals.items():
            setattr(tk, n, kernel)
    return [launch for r in recorders.values() for launch in r.launches]


def _record_hash_grid(dtype: torch.dtype) -> list[_Launch]:
    from . import _hash_grid_triton as tk
    from .hash_grid import _HashGridFunction, _HashGridJacobianFunction
    from .hash_grid_config import HashGridConfig

    names = ["_hash_grid_fwd_kernel", "_hash_grid_bwd_kernel", "_hash_grid_jac_fwd_kernel", "_hash_grid_jac_bwd_kernel"]
    originals = {n: getattr(tk, n) for n in names}
    recorders = {n: _Recorder(k) for n, k in originals.items()}
    config = HashGridConfig(n_levels=4, log2_hashmap_size=12)
    x = torch.rand(100, 3, requires_grad=True)
    table = torch.zeros(config.n_params, dtype=dtype, requires_grad=True)
    try:
        for n, r in recorders.items():
            setattr(tk, n, r)
        _HashGridFunction.apply(x, table, config).float().sum().backward()
        y, jac = _HashGridJacobianFunction.apply(x, table, config)
        (y.float().sum() + jac.float().sum()).backward()
    finally:
        for n, kernel in originals.items():
            setattr(tk, n, kernel)
    return [launch for r in recorders.values() for launch in r.launches]


def _record_density(dtype: torch.dtype) -> list[_Launch]:
    """The density head ops (with and without the input gradient) and the fused density op, forward and
    backward (table in ``dtype``)."""
    from . import _hash_grid_triton as grid_k, _mlp_head_triton as head_k
    from .density_gradient import _DensityGradientFunction
    from .hash_grid_config import HashGridConfig
    from .mlp_head import _MLPHeadFunction, _MLPHeadRawFunction

    modules = {head_k: ["_mlp_head_fwd_kernel", "_mlp_head_bwd_kernel"],
               grid_k: ["_hash_grid_jac_fwd_kernel", "_jac_matvec_kernel", "_hash_grid_jac_bwd_kernel"]}
    originals = {(m, n): getattr(m, n) for m, names in modules.items() for n in names}
    recorders = {key: _Recorder(k) for key, k in originals.items()}
    config = HashGridConfig(n_levels=16, log2_hashmap_size=12)  # K = 32, the official width
    x = torch.rand(100, 3, requires_grad=True)  # the grid's backward with the point gradient too
    table = torch.zeros(config.n_params, dtype=dtype, requires_grad=True)
    w1 = torch.zeros(64, config.n_output_dims, requires_grad=True)
    w2 = torch.zeros(64, requires_grad=True)
    try:
        for (m, n), r in recorders.items():
            setattr(m, n, r)
        raw, v = _MLPHeadFunction.apply(torch.zeros(100, config.n_output_dims, requires_grad=True), w1, w2)
        (raw.sum() + v.sum()).backward()
        _MLPHeadRawFunction.apply(torch.zeros(100, config.n_output_dims, requires_grad=True), w1, w2).sum().backward()
        feats, raw, grad = _DensityGradientFunction.apply(x, table, w1, w2, config)
        (feats.float().sum() + raw.sum() + grad.sum()).backward()
    finally:
        for (m, n), kernel in originals.items():
            setattr(m, n, kernel)
    return [launch for r in recorders.values() for launch in r.launches]


def _record_group_norm(dtype: torch.dtype) -> list[_Launch]:
    """GroupNorm → SiLU forward and backward on channels-last inputs in ``dtype``, one of them with a
    single position and one channel per group. Only strides equal to 1 are specialized here, as a
    launch does, not the divisibility a launch also records."""
    from . import _group_norm_triton as tk
    from .group_norm import _launch_backward, _launch_forward

    names = ["_stats_kernel", "_finalize_stats_kernel", "_apply_kernel", "_bwd_partials_kernel", "_finalize_bwd_kernel",
             "_bwd_apply_kernel"]
    originals = {n: getattr(tk, n) for n in names}
    recorders = {n: _Recorder(k) for n, k in originals.items()}
    weight, bias = torch.ones(64, dtype=dtype), torch.zeros(64, dtype=dtype)
    try:
        for n, r in recorders.items():
            setattr(tk, n, r)
        for shape, groups in (((2, 64, 8, 8), 32), ((2, 64, 1, 1), 64)):  # the second: HW = C/G = 1
            x = torch.zeros(*shape, dtype=dtype).to(memory_format=torch.channels_last)
            _, _, mean, rstd = _launch_forward(x, weight, bias, groups, 1e-6, True)
            _launch_backward(x, torch.zeros_like(x), mean, rstd, weight, bias, groups, True, True)
    finally:
        for n, kernel in originals.items():
            setattr(tk, n, kernel)
    return [launch for n in names for launch in recorders[n].launches]


ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALL_MODES = ("none", "full", "kv")


def compile_all(arch: int = 90, *, dtypes=ALL_DTYPES, modes=ALL_MODES, all_tiles: bool = True,
                group_norm_dtypes=None, log=print) -> int:
    """Compile the kernels for ``dtypes`` × reference ``modes``; returns the number of compilations.

    ``group_norm_dtypes``: the dtypes for the GroupNorm kernels (None: ``dtypes``).

    ``all_tiles``: also every autotuning tile of the mv_attention kernels (for bf16 with the full
    reference). Raises on the first failure.
    """
    from . import _mv_attention_triton as tk
    from ._backends import interpreter_active

    if interpreter_active():
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset: the interpreter replaces the kernels")
    from . import _mlp_head_triton as head_k

    count = 0
    for dtype in dtypes if group_norm_dtypes is None else group_norm_dtypes:
        for launch in _record_group_norm(dtype):
            t0 = time.perf_counter()
            report = _compile(launch, None, arch)
            count += 1
            log(f"ok  {launch.kernel.fn.__name__} {str(dtype)[6:]} ({time.perf_counter() - t0:.1f}s) {report}")
    for dtype in dtypes:
        for launch in _record_hash_grid(dtype):
            t0 = time.perf_counter()
            report = _compile(launch, None, arch)
            count += 1
            log(f"ok  {launch.kernel.fn.__name__} table={str(dtype)[6:]} ({time.perf_counter() - t0:.1f}s) {report}")
        if dtype != torch.bfloat16:  # hash tables are float32 or float16
            for launch in _record_density(dtype):
                tunable = hasattr(launch.kernel, "configs")
                tiles = [None]
                if tunable:
                    tiles = [head_k.tile_config(*head_k.DEFAULT_TILE)]
                    if all_tiles:
                        tiles = [head_k.tile_config(*tile) for tile in head_k.TILES]
                for tile in tiles:
                    t0 = time.perf_counter()
                    report = _compile(launch, tile, arch)
                    count += 1
                    name = (launch.kernel.fn if tunable else launch.kernel).fn.__name__
                    where = f" tile=({tile.kwargs['BLOCK']}, {tile.num_warps})" if tile is not None else ""
                    log(f"ok  {name} table={str(dtype)[6:]}{where} ({time.perf_counter() - t0:.1f}s) {report}")
        for mode in modes:
            for launch in _record_mv_attention(dtype, mode):
                tunable = hasattr(launch.kernel, "configs")
                is_fwd = tunable and launch.kernel.fn.fn.__name__ == "_mv_attn_fwd_kernel"
                tiles = [None]
                if tunable:
                    tiles = [tk.FWD_DEFAULT] if is_fwd else [tk.BWD_DEFAULT]
                    if all_tiles and dtype == torch.bfloat16 and mode == "full":
                        tiles = tk.FWD_TILES if is_fwd else tk.BWD_TILES
                for tile in tiles:
                    t0 = time.perf_counter()
                    report = _compile(launch, tile, arch)
                    count += 1
                    name = (launch.kernel.fn if tunable else launch.kernel).fn.__name__
                    log(f"ok  {name} {str(dtype)[6:]} ref={mode} tile={tile} ({time.perf_counter() - t0:.1f}s) {report}")
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability ×10 (90: H100/H200)")
    parser.add_argument("--default-tiles-only", action="store_true", help="skip the other autotuning tiles")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    n = compile_all(args.arch, dtypes=[getattr(torch, d) for d in args.dtypes], all_tiles=not args.default_tiles_only)
    print(f"{n} compilations for sm_{args.arch} in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
