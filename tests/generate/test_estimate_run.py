"""benchmarks/generate/estimate_run.py: the full-run estimate's arithmetic on synthetic benchmark files."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate" / "estimate_run.py"


@pytest.fixture(scope="module")
def estimate_run():
    spec = importlib.util.spec_from_file_location("estimate_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(size, state, provider, spr, seconds):
    views = 8 if size == 64 else 4
    rays = views * size * size
    return {"stats": {"median": seconds},
            "extra_info": {"field_state": state, "provider": provider, "views": views, "render_size": size,
                           "samples_evaluated": round(spr * rays)}}


def test_linear_model_summed_over_the_trace(tmp_path, estimate_run, capsys):
    # Step time a + b·spr per stage: 64²: 50 ms + 1 ms per sample/ray; 256²: 40 ms + 4 ms per sample/ray.
    line = {64: (0.050, 0.001), 256: (0.040, 0.004)}
    benches = [_bench(size, state, f"{state}_graphed", spr, a + b * spr)
               for size, (a, b) in line.items() for state, spr in (("blob", 40.0), ("surface", 10.0))]
    benches.append(_bench(64, "blob", "blob", 40.0, 9.9))  # eager, only one state and stage: ignored
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benches}))
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"samples_per_ray": [30.0] * 4 + [20.0] * 2}))
    assert estimate_run.main([str(path), "--trace", str(trace), "--steps", "10", "--switch", "4"]) == 0
    out = capsys.readouterr().out
    # 4 steps at 64² × (50 + 30) ms + 6 steps at 256² × (40 + 80) ms = 0.32 + 0.72 s = 0.0173 min.
    rows = estimate_run.estimate(estimate_run._points([path]), [30.0] * 4 + [20.0] * 2, switch=4, steps=10)
    assert len(rows) == 1 and rows[0]["variant"] == "graphed"
    assert rows[0]["64_ms_at_mean"] == pytest.approx(80.0)
    assert rows[0]["256_ms_at_mean"] == pytest.approx(120.0)
    assert rows[0]["total_min"] == pytest.approx((4 * 0.080 + 6 * 0.120) / 60)
    assert rows[0]["256_ns_per_sample"] == pytest.approx(0.004 / (4 * 256 * 256) * 1e9)
    assert "| graphed |" in out


def test_refuses_a_trace_without_the_second_stage(tmp_path, estimate_run):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"samples_per_ray": [30.0] * 3}))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(SystemExit):
        estimate_run.main([str(path), "--trace", str(trace), "--switch", "5"])
