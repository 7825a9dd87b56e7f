"""What a checkpoint costs the SDS loop: ``torch.save`` in the loop's thread vs :class:`CheckpointWriter`'s
background write (the loop pays for the host snapshot only).

The state is ``generate``'s: the field and its AdamW moments after one step, on the benchmark device
(on a GPU the snapshot includes the device-to-host copy), plus the run's per-step records. The official
field (12.6 M parameters: ~151 MB with the moments) on a full run; ``cpu_tiny``'s with ``--smoke``.
``background`` times the caller's side of ``save`` with the previous write finished (as in a run,
where 100 steps separate two checkpoints); ``background_back_to_back`` without waiting, i.e. bound by
the disk. Files go to pytest's ``tmp_path`` (the machine's temporary disk).
"""

from __future__ import annotations

import pytest
import torch

from iso3d.generation import GenerateConfig
from iso3d.nerf import FieldConfig, ImplicitVolume
from iso3d.utils.checkpoint import CheckpointWriter

PROVIDERS = ("sync", "background", "background_back_to_back")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_checkpoint(run_bench, bench_device, smoke, tmp_path, provider):
    field_config = GenerateConfig.cpu_tiny().field if smoke else FieldConfig()
    fld = ImplicitVolume(field_config, seed=0).to(bench_device)
    optim = torch.optim.AdamW(fld.parameters(), lr=1e-2)
    fld.density(torch.rand(4096, 3, device=bench_device)).sum().backward()
    optim.step()  # the moments exist, as in every checkpoint of a run
    records = [0.1] * 5000  # losses, step times, samples per ray: half a run's worth each
    state = lambda: {"field": fld.state_dict(), "optimizer": optim.state_dict(), "step": 5000,  # noqa: E731
                     "losses": records, "step_seconds": records, "samples_per_ray": records}
    writer = CheckpointWriter(tmp_path / "checkpoint.pt", background=provider != "sync")
    params = sum(p.numel() for p in fld.parameters())
    try:
        writer.save(state(), wait=True)  # the file's size for the record; the folder exists
        megabytes = (tmp_path / "checkpoint.pt").stat().st_size / 1e6
        run_bench(lambda: writer.save(state()), group=f"checkpoint {params / 1e6:.1f}M-parameter field + AdamW",
                  provider=provider, baseline="sync", work=1, unit="saves/s", max_rounds=10,
                  setup=writer.wait if provider == "background" else None,
                  extra=dict(parameters=params, megabytes=round(megabytes, 1), note=f"{megabytes:.0f} MB"))
    finally:
        writer.wait()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 5000 and saved["field"].keys() == fld.state_dict().keys()
