"""Package hygiene: light imports, exported names, executed docstring examples, `iso3d info`."""

import doctest
import importlib
import subprocess
import sys

import pytest

HEAVY = ["triton", "diffusers", "open_clip", "torchvision", "timm", "nerfacc", "tinycudann", "xformers", "mcubes", "trimesh"]


def _run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_is_light_and_gpu_free():
    # CUDA_VISIBLE_DEVICES="" hides any GPU: importing must not need one, nor load optional packages.
    code = (
        "import os, sys; os.environ['CUDA_VISIBLE_DEVICES'] = ''\n"
        "import iso3d, iso3d.kernels, iso3d.cli, iso3d.nerf, iso3d.cameras, iso3d.io, iso3d.models, iso3d.pipelines, iso3d.data, iso3d.training, iso3d.sds, iso3d.export, iso3d.generation, iso3d.evaluation\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert _run_python(code).strip() == "[]"


@pytest.mark.parametrize(
    "module",
    ["iso3d", "iso3d.kernels", "iso3d.kernels.reference", "iso3d.utils.imports", "iso3d.cameras", "iso3d.nerf",
     "iso3d.models", "iso3d.io", "iso3d.pipelines", "iso3d.data", "iso3d.training", "iso3d.sds", "iso3d.export"],
)
def test_all_names_exist(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ lists {name!r}, which it does not define"


@pytest.mark.parametrize(
    "module",
    [
        "iso3d.kernels.mv_attention",
        "iso3d.kernels.hash_grid",
        "iso3d.kernels.hash_grid_config",
        "iso3d.kernels.mlp_head",
        "iso3d.kernels.density_gradient",
        "iso3d.kernels.group_norm",
        "iso3d.utils.imports",
        "iso3d.utils.torchvision_compat",
        "iso3d.cameras",
        "iso3d.nerf.encoding",
        "iso3d.nerf.field",
        "iso3d.nerf.renderer",
        "iso3d.io.images",
        "iso3d.models.unet",
        "iso3d.models.bundle",
        "iso3d.models.guidance",
        "iso3d.models.cuda_graph",
        "iso3d.models.latent_encoder",
        "iso3d.models.fused_norm",
        "iso3d.models.presets",
        "iso3d.models.precision",
        "iso3d.pipelines.multiview",
        "iso3d.pipelines.isotropic3d",
        "iso3d.export.depth_fusion",
        "iso3d.export.threshold",
        "iso3d.utils.dataclass_dict",
        "iso3d.utils.checkpoint",
        "iso3d.evaluation.geometry",
    ],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), raise_on_error=False)
    assert result.attempted > 0, f"{module} has no executed example"
    assert result.failed == 0


def test_info_reports_every_backend():
    out = _run_python("from iso3d.cli import main; main(['info'])")
    for key in ["torch", "gpu", "triton", "tiny-cuda-nn", "nerfacc", "xformers", "open_clip", "diffusers"]:
        assert any(line.startswith(key) for line in out.splitlines()), f"`iso3d info` lacks {key!r}:\n{out}"
    for line in out.splitlines():
        if "not installed" in line:
            assert "pip install" in line, f"refusal without an install hint: {line}"


def test_missing_optional_dependency_names_install_command():
    from iso3d.utils.imports import probe, require

    ok, why = probe("surely_not_a_module_iso3d")
    assert not ok and "pip install" in why
    with pytest.raises(ImportError, match="the frobnicator requires surely_not_a_module_iso3d"):
        require("surely_not_a_module_iso3d", "the frobnicator")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")
def test_torchvision_shim_makes_model_libraries_import():
    code = (
        "from iso3d.utils.torchvision_compat import patch_torchvision_if_needed\n"
        "patched = patch_torchvision_if_needed()\n"
        "import torchvision, open_clip\n"
        "from diffusers import UNet2DConditionModel\n"
        "print(patched)\n"
    )
    assert _run_python(code).strip() in ("True", "False")


def test_torchvision_shim_is_noop_once_torchvision_is_imported():
    code = (
        "import sys, types; sys.modules['torchvision'] = types.ModuleType('torchvision')\n"
        "from iso3d.utils.torchvision_compat import patch_torchvision_if_needed\n"
        "print(patch_torchvision_if_needed())\n"
    )
    assert _run_python(code).strip() == "False"


def test_selftest_command_passes():
    code = "from iso3d.cli import main; raise SystemExit(main(['selftest']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok ") == 6  # attention fp32 + fp16, hash grid, Jacobian, density head, fused density
