"""Test-session setup. Kernels run natively on a GPU; without one, through Triton's interpreter.

TRITON_INTERPRET must be set before any Triton kernel is defined, hence here, at collection start.
Hub access is off: tests never download weights.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from iso3d.utils.torchvision_compat import patch_torchvision_if_needed  # noqa: E402

# Tests import open_clip / diffusers directly (importorskip); make torchvision importable first.
patch_torchvision_if_needed()


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
