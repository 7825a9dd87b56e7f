"""A full official run's time from measured SDS steps and a real run's samples-per-ray trace.

Step time is modelled, per render stage and per variant of the step, as linear in the samples per ray
kept after pruning, through the two field states that ``bench_sds_step.py`` times (the initial blob
and a sharp-surfaced ball: ``test_sds_step_field_state`` / ``test_sds_step_density_head``); the line
is summed over the trace's samples per ray (64² for steps before the switch, 256² after it; the
256² stage at the mean of its traced steps). RESULTS.md explains the model and its caveats.

Usage::

    python benchmarks/generate/estimate_run.py benchmarks/figures/h100_s20/bench_density_head.json \\
        --trace benchmarks/figures/trace_h100_s8.json

The default trace is the twentieth session's: ``iso3d generate --device cuda`` as it runs now (bf16
guidance by today's iso3d-tiny), 5,900 steps on an H100. ``trace_h100_s8.json`` is the eighth
session's (fp32 guidance by the iso3d-tiny of then), kept for comparison with the earlier estimates.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

STATES = ("blob", "surface")


def _points(paths: list[Path]) -> dict:
    """``{(file, variant, size): {state: (samples_per_ray, median_s, rays)}}`` from pytest-benchmark JSON files."""
    points: dict = defaultdict(dict)
    for path in paths:
        for bench in json.loads(path.read_text())["benchmarks"]:
            info = bench["extra_info"]
            state = info.get("field_state")
            if state not in STATES or "samples_evaluated" not in info:
                continue
            variant = info["provider"].removeprefix(f"{state}_") if info["provider"] != state else "eager"
            rays = info["views"] * info["render_size"] ** 2
            points[(f"{path.parent.name}/{path.name}", variant, info["render_size"])][state] = (
                info["samples_evaluated"] / rays, bench["stats"]["median"], rays)
    return points


def estimate(points: dict, samples_per_ray: list[float], switch: int, steps: int) -> list[dict]:
    """Minutes per stage and in all, per (file, variant) with both states at both stages."""
    stage_mean = {64: sum(samples_per_ray[:switch]) / switch,
                  256: sum(samples_per_ray[switch:]) / max(1, len(samples_per_ray) - switch)}
    stage_steps = {64: switch, 256: steps - switch}
    rows = []
    for key in sorted({(f, v) for f, v, _ in points}):
        row = {"file": key[0], "variant": key[1]}
        for size in (64, 256):
            pair = points.get((*key, size), {})
            if set(pair) != set(STATES):
                break
            (s_blob, t_blob, rays), (s_surf, t_surf, _) = pair["blob"], pair["surface"]
            slope = (t_blob - t_surf) / (s_blob - s_surf)  # s per (sample per ray)
            row[f"{size}_ms_at_mean"] = 1e3 * (t_surf + slope * (stage_mean[size] - s_surf))
            row[f"{size}_min"] = stage_steps[size] * row[f"{size}_ms_at_mean"] / 1e3 / 60
            row[f"{size}_ns_per_sample"] = slope / rays * 1e9
        else:
            row["total_min"] = row["64_min"] + row["256_min"]
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json)")
    parser.add_argument("--trace", type=Path, default=Path(__file__).resolve().parents[1] / "figures" / "trace_h100_s20_bf16.json")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--switch", type=int, default=5_000, help="the step where renders go from 64² to 256²")
    args = parser.parse_args(argv)
    trace = json.loads(args.trace.read_text())["samples_per_ray"]
    if len(trace) <= args.switch:
        parser.error(f"the trace has {len(trace)} steps: none after the switch at {args.switch}")
    rows = estimate(_points(args.bench), trace, args.switch, args.steps)
    if not rows:
        parser.error("no variant has blob and surface steps at both 64² and 256² in these files")
    print(f"trace: {len(trace)} steps, mean samples/ray {sum(trace[:args.switch]) / args.switch:.1f} at 64², "
          f"{sum(trace[args.switch:]) / (len(trace) - args.switch):.1f} at 256²")
    print("| file | variant | 64² stage | 256² stage | whole run | ns per kept sample (64² / 256²) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['variant']} | {r['64_min']:.2f} min | {r['256_min']:.2f} min | **{r['total_min']:.1f} min** | "
              f"{r['64_ns_per_sample']:.1f} / {r['256_ns_per_sample']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
