"""Write the report of a benchmarks/gpu_check.sh run: benchmarks/results/gpu_<yyyymmdd>.md by default.

    python benchmarks/gpu_report.py RUN_DIR [--out PATH] [--speedup-batches N] [--time-limit S]

RUN_DIR holds what gpu_check.sh wrote: calibration-<model>.json (from `hetero-sched profile`), check-<model>.json
(from `hetero-sched check-model`, every model with the same calibration) and environment.txt. The report
gives, per model, the per-layer time predicted by the calibrated step model against the time measured on
real decoder layers, the memory predicted against the peak measured, whether a max_tokens(1, 1)
micro-batch fits; then how the calibration moves the step model's prices from the shipped H100 constants,
and what that does to the planner's predicted speed-ups over the best placed WLB-LLM plan on a few
realistic batches (each solved under both models). A CPU rehearsal is labelled as one in its title.
Needs only the hetero-sched install (no torch): it can run on the GPU machine or wherever RUN_DIR is copied.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

import hetero_sched as hs
from hetero_sched.io import write_atomic
from hetero_sched.workload import synthetic

RESULTS = Path(__file__).resolve().parent / "results"
PRICE_POINTS = [(4096, 1, 1), (32768, 1, 1), (32768, 4, 2), (131072, 8, 1), (131072, 8, 4)]
BATCHES = [("prolong", 64, 131072), ("lognormal", 64, 131072), ("prolong", 16, 32768)]


def load_run(run: Path) -> tuple[list[dict], dict[str, Path], str]:
    checks = [json.loads(p.read_text()) for p in sorted(run.glob("check-*.json"))]
    if not checks:
        raise SystemExit(f"{run}: no check-*.json (run benchmarks/gpu_check.sh first)")
    # the calibration's own model first, the holdouts after it
    checks.sort(key=lambda d: (Path(d["calibration"]["path"]).name != f"calibration-{d['model']['name']}.json"
                               and not d["calibration"]["made_here"], d["model"]["name"]))
    calibrations = {p.name: p for p in sorted(run.glob("calibration-*.json"))}
    env = (run / "environment.txt").read_text() if (run / "environment.txt").exists() else ""
    return checks, calibrations, env


def gpu_preset_for(device_name: str) -> str:
    """The GPU preset whose link speeds the (single-GPU) calibration leaves to the datasheet."""
    name = device_name.lower()
    for key, preset in (("h200", "h200"), ("b200", "b200"), ("a100", "a100-80g")):
        if key in name:
            return preset
    return "h100"


def fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def check_section(doc: dict) -> list[str]:
    shape, dev = doc["shape"], doc["device"]
    cuda = dev["kind"] == "cuda"
    lines = [f"## {doc['model']['name']}" + ("" if shape == doc["model"] else f" (timed at the reduced shape "
                                                                                f"{shape['name']})"), "",
             (f"Layers: hidden {shape['hidden']}, {shape['heads']} heads / {shape['kv_heads']} KV heads, ffn "
              f"{shape['ffn']}; {doc['software']['attention']}; recompute `{doc['recompute']}`; layer counts "
              f"{doc['layers_differenced'][0]} and {doc['layers_differenced'][1]} differenced; TP1 CP1; "
              f"{doc['wall_s']:.0f} s. Calibration `{doc['calibration']['sha256'][:16]}`."), ""]
    head = "| tokens | predicted ms/layer | measured ms/layer | error |"
    head += " predicted GB | measured GB |" if cuda else ""
    lines += [head, "|" + "---:|" * (head.count("|") - 1)]
    for r in doc["rows"]:
        cells = [f"{r['length']:,}", fmt(r["predicted_ms"]), fmt(r["measured_ms"]),
                 "-" if r["error"] is None else f"{r['error']:+.1%}"]
        if cuda:
            cells += [fmt(r.get("predicted_gb"), ".1f"), fmt(r.get("measured_gb"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    med = doc["median_abs_error"]
    lines += ["", f"Median |error| over {len(doc['rows'])} lengths: **{fmt(med and 100 * med, '.1f')} %**."]
    cap = doc.get("capacity")
    if cap:
        verdict = (f"fits: peak {cap['measured_gb']:.1f} GB against {cap['predicted_gb']:.1f} GB predicted "
                   f"(usable {cap['usable_gb']:.1f} of {cap['device_gb']:.1f} GB), {cap['measured_ms']:,.0f} ms "
                   f"against {cap['predicted_ms']:,.0f} ms predicted") if cap["fits"] \
            else f"**does not fit** ({cap.get('oom', 'out of memory')}; {cap['predicted_gb']:.1f} GB predicted)"
        lines += ["", f"A max_tokens(1, 1) = {cap['tokens']:,}-token micro-batch through all {cap['layers']} layers "
                      f"(ZeRO-1 shard of {cap['gpus']} GPUs held): {verdict}."]
    lines += [""] + [f"- note: {n}" for n in doc.get("notes", [])]
    return lines + [""]


def price_section(model: hs.ModelSpec, calibration: Path, gpu: str) -> list[str]:
    """seq_latency_ms and max_tokens under the calibration against the shipped H100 constants."""
    cluster = hs.Cluster(gpus=64, gpus_per_node=8, gpu=gpu)
    shipped = hs.latency_model(model, hs.Cluster(gpus=64, gpus_per_node=8))
    cal = hs.latency_model(model, cluster, calibration=calibration)
    lines = [f"## Step-model prices for {model.name}: calibration vs shipped H100 constants", "",
             "| tokens | TP | CP | shipped ms | calibrated ms | ratio |", "|---:|---:|---:|---:|---:|---:|"]
    for L, tp, cp in PRICE_POINTS:
        if L > min(shipped.max_tokens(tp, cp), cal.max_tokens(tp, cp)):
            continue
        a, b = shipped.seq_latency_ms(L, tp, cp), cal.seq_latency_ms(L, tp, cp)
        lines.append(f"| {L:,} | {tp} | {cp} | {a:,.1f} | {b:,.1f} | {b / a:.3f} |")
    lines += ["", "| TP | shipped max_tokens(TP, 1) | calibrated |", "|---:|---:|---:|"]
    lines += [f"| {tp} | {shipped.max_tokens(tp, 1):,} | {cal.max_tokens(tp, 1):,} |" for tp in (1, 2, 4, 8)]
    return lines + [""]


def speedup_section(model: hs.ModelSpec, calibration: Path, gpu: str, batches: int, limit: float) -> list[str]:
    """Predicted step speed-up over the best placed WLB-LLM plan, each batch solved under both models."""
    lines = [f"## Predicted speed-ups under the calibration ({model.name}, {limit:g} s per solve)", "",
             "| batch | GPUs | context | shipped constants | calibrated |", "|---|---:|---:|---:|---:|"]
    for family, gpus, context in BATCHES[:batches]:
        spec = (f"prolong:tokens={gpus * 16384},context={context},seed=0" if family == "prolong"
                else f"lognormal:n={gpus * 4},context={context},seed=0")
        lengths = synthetic(spec)
        speedups = []
        for calib, gpu_name in ((None, "h100"), (calibration, gpu)):
            cluster = hs.Cluster(gpus=gpus, gpus_per_node=8, gpu=gpu_name)
            try:
                lat = hs.latency_model(model, cluster, calibration=calib)
                plan = hs.solve(lengths, cluster, lat, time_limit_s=limit, threads=2)
                speedups.append(f"{plan.baseline['step_ms'] / plan.step_ms:.3f}x")
            except ValueError as exc:  # e.g. a document longer than any group holds under this calibration
                speedups.append(f"- ({str(exc)[:60]})")
        lines.append(f"| {family} | {gpus} | {context // 1024}K | {speedups[0]} | {speedups[1]} |")
    return lines + ["", "The full suite: `python benchmarks/run.py realistic` prices with the shipped constants; "
                        "these rows solve the same kind of batches under both.", ""]


def report(run: Path, batches: int, limit: float) -> tuple[str, bool]:
    checks, calibrations, env = load_run(run)
    dev = checks[0]["device"]
    rehearsal = dev["kind"] != "cuda"
    first = checks[0]
    calib_path = run / Path(first["calibration"]["path"]).name
    title = "GPU check" + (" — CPU REHEARSAL (not GPU results)" if rehearsal else f": {dev['name']}")
    lines = [f"# {title} ({dt.date.today():%Y-%m-%d})", "",
             ("Written by `benchmarks/gpu_report.py` from a `benchmarks/gpu_check.sh` run: the step model, "
              "calibrated on this device by `hetero-sched profile`, against real decoder layers timed by "
              "`hetero-sched check-model` (forward + recompute + backward per layer, TP1 CP1), every model with "
              "the same calibration."), "",
             f"Device: {dev['name']} ({dev['kind']}); torch {first['software']['torch']}, CUDA "
             f"{first['software']['cuda']}, Python {first['software']['python']}, attention "
             f"{first['software']['attention']}.", ""]
    if env.strip():
        lines += ["```", env.strip(), "```", ""]
    if calib_path.exists():
        doc = json.loads(calib_path.read_text())
        g, a = doc["gemm"], doc["attention"]
        lines += [f"Calibration `{calib_path.name}` (sha256 `{first['calibration']['sha256']}`): GEMM peak "
                  f"{g['peak_tflops']:.3g} TFLOP/s, m½ {g['m_half']:.0f}, floor {g['floor_ms'] * 1e3:.1f} us; attention "
                  f"forward {min(a['fwd_tflops']):.3g}-{max(a['fwd_tflops']):.3g} TFLOP/s over "
                  f"{int(min(a['fwd_seqlen'])):,}-{int(max(a['fwd_seqlen'])):,} tokens, backward rate "
                  f"{a['bwd_rate']:.2f}; {doc.get('nccl_note', '')}", ""]
    errors = [abs(r["error"]) for d in checks for r in d["rows"] if r["error"] is not None]
    lines += [f"Over {len(checks)} models and {len(errors)} lengths: median |error| "
              f"{100 * statistics.median(errors):.1f} %, largest {100 * max(errors):.1f} %." if errors else "", ""]
    for doc in checks:
        lines += check_section(doc)
    if rehearsal:
        lines += ["Prices and speed-ups under a CPU calibration mean nothing for a GPU cluster: "
                  "the rehearsal only exercises the code that computes them.", ""]
    model = hs.ModelSpec.from_dict(first["model"])
    if calib_path.exists() and not first["calibration"].get("quick"):
        gpu = gpu_preset_for(dev["name"])
        lines += price_section(model, calib_path, gpu)
        if batches:
            lines += speedup_section(model, calib_path, gpu, batches, limit)
    elif calib_path.exists() and batches:
        lines += speedup_section(hs.ModelSpec.from_dict(first["shape"]), calib_path, "h100", batches, limit)
    return "\n".join(lines).rstrip() + "\n", rehearsal


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the folder gpu_check.sh wrote")
    p.add_argument("--out", type=Path, help="report path (default benchmarks/results/gpu_<yyyymmdd>.md; "
                   "RUN/gpu_rehearsal_<yyyymmdd>.md for a CPU rehearsal)")
    p.add_argument("--speedup-batches", type=int, default=3, help=f"realistic batches solved under both models "
                   f"(0-{len(BATCHES)}, default 3)")
    p.add_argument("--time-limit", type=float, default=5.0, help="seconds per solve (default 5)")
    args = p.parse_args(argv)
    text, rehearsal = report(args.run, max(0, min(args.speedup_batches, len(BATCHES))), args.time_limit)
    stamp = f"{dt.date.today():%Y%m%d}"
    out = args.out or (args.run / f"gpu_rehearsal_{stamp}.md" if rehearsal else RESULTS / f"gpu_{stamp}.md")
    write_atomic(out, text)
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
