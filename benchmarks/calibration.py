"""Regenerate benchmarks/results/calibration_<yyyymm>.{md,csv,png}.

Fits the analytic curves on Llama-2-7b only, reports the error on four holdout models per operator and
TP degree, compares with a naive FLOP-binned curve, checks end-to-end throughput against torchtitan's
published figures and measures how far the additive step contract is from a packed micro-batch.
Run from a checkout: python benchmarks/calibration.py
"""
from __future__ import annotations

import datetime as dt
import platform
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import hetero_sched as hs
from hetero_sched._data import model_data_path
from hetero_sched.latency import calibrate as cal
from hetero_sched.latency.analytic import gemm_fit_ms

OUT = Path(__file__).resolve().parent / "results"
# torchtitan, Llama-3.1-8B on H100, tokens/s/GPU (quoted in the reference README of the shared data).
TORCHTITAN = {(32768, 1): 3890.0, (262144, 8): 548.0}


def naive_flop_binned(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """Baseline: GEMM throughput looked up by FLOP bin (median of the training rows in the bin)."""
    flops = lambda d: 2 * d.tokens * d.N * d.K
    bins = np.logspace(np.log10(flops(train).min()) - 0.01, np.log10(flops(train).max()) + 6, 40)
    tput = flops(train) / train.measured_ms
    idx = np.digitize(flops(train), bins)
    per_bin = pd.Series(tput.to_numpy()).groupby(idx).median()
    test_idx = np.clip(np.digitize(flops(test), bins), per_bin.index.min(), per_bin.index.max())
    lookup = per_bin.reindex(range(per_bin.index.min(), per_bin.index.max() + 1)).ffill().bfill()
    return flops(test).to_numpy() / lookup.loc[test_idx].to_numpy()


def error_table(errors: pd.DataFrame) -> pd.DataFrame:
    a = errors.assign(abs_err=errors.rel_error.abs())
    return a.groupby(["op", "tp"]).abs_err.agg(median="median", p90=lambda s: s.quantile(0.9)).reset_index()


def end_to_end() -> list[dict]:
    model = hs.ModelSpec.preset("llama3-8b")  # Llama-3.1-8B has the Llama-3-8B shape
    rows = []
    for (length, cp), published in TORCHTITAN.items():
        lat = hs.latency_model(model, hs.Cluster(gpus=64))  # ZeRO-1 over 64 GPUs
        ms = lat.group_latency_ms([length], tp=1, cp=cp)
        ours = length / (ms / 1e3) / cp
        rows.append({"length": length, "cp": cp, "model_tokens_s_gpu": ours, "torchtitan": published,
                         "ratio": ours / published})
    return rows


def packing_gap() -> list[dict]:
    """4 x 1K documents packed in one 4K micro-batch: additive contract vs the micro-batch's real cost."""
    rows = []
    model = hs.ModelSpec.preset("llama2-7b")
    cluster = hs.Cluster(gpus=8)
    for name, lat in [("analytic", hs.latency_model(model, cluster)),
                      ("table", hs.latency_model(model, cluster, table=model_data_path("h100", "Llama-2-7b-hf.csv")))]:
        additive = lat.group_latency_ms([1024] * 4, tp=1, cp=1)
        # one micro-batch of 4096 tokens: linear kernels see M=4096; attention stays per document
        linear_packed = lat.linear_fwd_ms(np.array([4096.0]), 1)[0]
        linear_additive = lat._linear_intercept(1) + 4 * (lat.linear_fwd_ms(np.array([1024.0]), 1)[0]
                                                          - lat._linear_intercept(1))
        passes = 4  # forward, recomputed forward, backward = 2 forwards
        packed = additive + model.layers * passes * (linear_packed - linear_additive)
        one_4k = lat.group_latency_ms([4096], tp=1, cp=1)
        rows.append({"model": name, "additive_ms": additive, "packed_ms": packed, "gap": additive / packed - 1,
                         "one_4k_sequence_ms": one_4k})
    return rows


GEMM_VARIANTS = {  # name: (t(M, N, K, params) in ms, start, lower, upper)
    "affine (shipped)": (lambda M, N, K, p: gemm_fit_ms(M, N, K, *p), [0.01, 700, 100], [0, 1, 0], [1, 3000, 1e5]),
    "shape efficiency 1/(1 + n½/N + k½/K)": (
        lambda M, N, K, p: p[0] + 2 * N * K * (M + p[2]) * (1 + p[3] / N + p[4] / K) / (p[1] * 1e9),
        [0.01, 700, 100, 10, 10], [0, 1, 0, 0, 0], [1, 3000, 1e5, 1e5, 1e5]),
    "M waves of 128 rows (weight w)": (
        lambda M, N, K, p: p[0] + 2 * N * K * (p[3] * 128 * np.ceil(M / 128) + (1 - p[3]) * M + p[2]) / (p[1] * 1e9),
        [0.01, 700, 100, 0.5], [0, 1, 0, 0], [1, 3000, 1e5, 1]),
    "N tiles of 256 columns": (lambda M, N, K, p: p[0] + 2 * 256 * np.ceil(N / 256) * K * (M + p[2]) / (p[1] * 1e9),
                               [0.01, 700, 100], [0, 1, 0], [1, 3000, 1e5]),
}


def gemm_variants(train: pd.DataFrame, holdout: pd.DataFrame) -> list[dict]:
    """Each GEMM curve fitted on the training model (log-error least squares), scored on the holdout."""
    from scipy.optimize import least_squares

    def arrays(d):
        return d.tokens.to_numpy(float), d.N.to_numpy(float), d.K.to_numpy(float), d.measured_ms.to_numpy()

    M, N, K, y = arrays(train)
    hM, hN, hK, hy = arrays(holdout)
    rows = []
    for name, (f, x0, lo, hi) in GEMM_VARIANTS.items():
        p = least_squares(lambda q, f=f: np.log(f(M, N, K, q)) - np.log(y), x0=x0, bounds=(lo, hi)).x
        err = np.abs(f(hM, hN, hK, p) / hy - 1)
        rows.append({"curve": name, "median": float(np.median(err)), "p90": float(np.quantile(err, 0.9))})
    return rows


def nccl_fit_errors() -> pd.DataFrame:
    """Relative error of the smooth (concave, monotone) NCCL curves against every measured row."""
    from hetero_sched.latency.nccl import _nccl_table, nccl_curve

    rows = []
    for kind in ("all_reduce", "send_recv"):
        table = _nccl_table("h100", kind)
        for (w, d), t in table.groupby(["num_workers", "devices_per_node"]):
            curve = nccl_curve("h100", kind, int(w), int(d))
            err = curve(t.bytes.to_numpy()) / t.time_ms.to_numpy() - 1
            big = t.bytes.to_numpy() >= 1 << 20
            rows.append({"collective": kind, "workers": int(w), "per_node": int(d), "rows": len(t),
                         "regimes": len(curve.regimes()), "median": float(np.median(err)),
                         "p10": float(np.quantile(err, 0.1)), "p90": float(np.quantile(err, 0.9)),
                         "median_abs_1MB_plus": float(np.median(np.abs(err[big]))),
                         "latency_us": curve.floor_ms * 1e3,
                         "bandwidth_gbs": curve.regimes()[-1][1]})
    return pd.DataFrame(rows)


def plot(errors: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    g = errors[errors.op.isin(cal.GEMM_OPS)]
    for model, d in g.groupby("model"):
        axes[0].scatter(d.measured_ms, d.predicted_ms, s=4, label=model)
    lim = [g.measured_ms.min(), g.measured_ms.max()]
    axes[0].plot(lim, lim, "k--", lw=1)
    axes[0].set(xscale="log", yscale="log", xlabel="measured ms (holdout)", ylabel="model ms",
                title="GEMMs, 4 holdout models, tokens >= 512")
    axes[0].legend(fontsize=7)
    e = errors.assign(abs_err=errors.rel_error.abs() * 100)
    order = e.groupby("op").abs_err.median().sort_values().index
    axes[1].boxplot([e[e.op == op].abs_err for op in order], tick_labels=order, showfliers=False)
    axes[1].set(ylabel="|error| %", title="holdout error per operator")
    axes[1].tick_params(axis="x", rotation=60, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    stamp = dt.date.today().strftime("%Y%m")
    train = cal.operator_rows(cal.load_profile(cal.TRAIN_MODEL))
    fitted = cal.fit(train)
    errors = cal.holdout_errors(cal.shipped_params())
    gemm = errors[errors.op.isin(cal.GEMM_OPS)]
    naive = naive_flop_binned(train[train.op.isin(cal.GEMM_OPS)], gemm)
    naive_err = np.abs(naive / gemm.measured_ms.to_numpy() - 1)
    table = error_table(errors)
    table.to_csv(OUT / f"calibration_{stamp}.csv", index=False, float_format="%.4f")
    plot(errors, OUT / f"calibration_{stamp}.png")
    all_err, g_err = errors.rel_error.abs(), gemm.rel_error.abs()
    per_model = errors.assign(a=all_err).groupby("model").a.agg(["median", lambda s: s.quantile(0.9)])
    lines = [
        f"# Step-model calibration ({dt.date.today():%Y-%m})", "",
        "Generated by `python benchmarks/calibration.py`; do not edit by hand.", "",
        (f"Environment: Python {platform.python_version()}, {platform.machine()}, numpy {np.__version__}, "
        f"pandas {pd.__version__}. Data: vidur H100 kernel tables (median statistic) shipped in "
        "`hetero_sched/models/h100/` (MIT, microsoft/vidur commit 7d47513)."), "",
        "## Fit (training model: Llama-2-7b-hf only)",
        (f"- GEMM curve `t = floor + 2MNK / (peak · M/(M+m½))`: floor {fitted['gemm'][0]:.6f} ms, "
        f"peak {fitted['gemm'][1]:.2f} TFLOP/s, m½ {fitted['gemm'][2]:.2f} tokens "
        "(shipped in `latency/constants.py`)."),
        "- Pointwise `t = floor + c · tokens · width`: " + "; ".join(
            f"{op} {f:.6f} ms + {c:.3e}" for op, (f, c) in fitted["pointwise"].items()), "",
        "## Holdout error (Llama-2-70b, CodeLlama-34b, internlm-20b, Qwen-72B; num_tokens >= 512)", "",
        "| set | rows | median abs error | p90 abs error |", "|---|---|---|---|",
        f"| all operators | {len(errors)} | {all_err.median():.1%} | {all_err.quantile(0.9):.1%} |",
        f"| GEMMs (our curve) | {len(gemm)} | {g_err.median():.1%} | {g_err.quantile(0.9):.1%} |",
        (f"| GEMMs (naive FLOP-binned curve) | {len(gemm)} | {np.median(naive_err):.1%} | "
        f"{np.quantile(naive_err, 0.9):.1%} |"), "",
        ("Shape-aware GEMM curves tried (fitted on Llama-2-7b like the shipped one, same holdout rows); none "
         "reaches the 5 % / 12 % target, so the affine curve stays (it also keeps the additive contract exact "
         "for one packed micro-batch). The residual follows cuBLAS kernel switches between neighbouring token "
         "counts (e.g. Llama-2-7b's up-projection at TP1: 0.171 ms at 624 tokens, 0.243 ms at 688), which no "
         "smooth or tile-periodic curve of (M, N, K) captures:"), "",
        "| GEMM curve | holdout median | holdout p90 |", "|---|---|---|",
        *[f"| {r['curve']} | {r['median']:.1%} | {r['p90']:.1%} |"
          for r in gemm_variants(train[train.op.isin(cal.GEMM_OPS)], gemm)], "",
        "Per model (all operators): " + ", ".join(
            f"{m} {r.iloc[0]:.1%} / {r.iloc[1]:.1%}" for m, r in per_model.iterrows()) + " (median / p90).", "",
        "Per operator and TP degree (median / p90 abs error):", "",
        "| operator | TP1 | TP2 | TP4 | TP8 |", "|---|---|---|---|---|",
    ]
    for op, d in table.groupby("op"):
        cells = [f"{r.median:.1%} / {r.p90:.1%}" for r in d.sort_values("tp").itertuples()]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    nccl = nccl_fit_errors()
    lines += ["", "## NCCL curves: smooth fits vs the measured rows (signed error, fit / measured - 1)", "",
              ("Latency + size / bandwidth per regime, monotone, without the steps that raw interpolation "
               "carried into the planner (a 128 KB protocol step made 1K tokens on TP8 cost 17.1 ms at CP4 and "
               "6.1 ms at CP5). send/recv (the CP ring): the least concave majorant of the per-half-octave "
               "medians, so a sequence's ring GPU-time never falls as CP grows; being a majorant it errs on "
               "the slow side. all-reduce (TP): a latency floor, then a bandwidth line fitted above the knee "
               "(the measured TP all-reduce is flat up to 256 KB-4 MB; a concave majorant overstated TP2/TP4 "
               "by 17-20 %)."), "",
              ("| collective | workers | per node | rows | regimes | median | p10 | p90 | median abs >= 1 MB | "
              "latency us | last-regime GB/s |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in nccl.itertuples():
        lines.append(f"| {r.collective} | {r.workers} | {r.per_node} | {r.rows} | {r.regimes} | {r.median:+.1%} | "
                     f"{r.p10:+.1%} | {r.p90:+.1%} | {r.median_abs_1MB_plus:.1%} | {r.latency_us:.1f} | "
                     f"{r.bandwidth_gbs:.1f} |")
    lines += ["", "## GPU presets", "", ("| preset | memory GB | dense bf16 TFLOP/s | HBM TB/s | NVLink bus GB/s | "
              "IB GB/s | calibrated | source |"), "|---|---|---|---|---|---|---|---|"]
    for name in hs.specs.gpu_presets():
        g = hs.specs.gpu_preset(name)
        lines.append(f"| {g.name} | {g.memory_gb:g} | {g.peak_tflops:g} | {g.hbm_tbps:g} | {g.nvlink_gbps:g} | "
                     f"{g.ib_gbps:g} | {g.calibrated} | {g.source} |")
    lines += ["", ("Uncalibrated presets scale the H100 curves: GEMMs and attention by the peak ratio, pointwise "
                   "kernels by the HBM ratio, NCCL by the link ratio. `hetero-sched profile` on the GPU replaces "
                   "them with measured curves (`--calibration`).")]
    lines += ["", "## End-to-end check against torchtitan (Llama-3.1-8B shape, TP1, full recomputation)", "",
              "| sequence | CP | model tokens/s/GPU | torchtitan | model / published |", "|---|---|---|---|---|"]
    for r in end_to_end():
        lines.append(f"| {r['length']:,} | {r['cp']} | {r['model_tokens_s_gpu']:.0f} | {r['torchtitan']:.0f} | "
                     f"{r['ratio']:.2f} |")
    lines += ["", ("The model is faster than torchtitan's published run: it counts kernels only (no FSDP "
              "parameter all-gathers, optimizer step or data loading inside the sequence's time, perfect "
              "ring overlap, FlashAttention-3 rates). Ratios, not absolute times, are what the planner "
              "relies on: both plans of a comparison are priced by the same model."), "",
              "## Additive contract vs a packed micro-batch (4 x 1K documents, TP1, Llama-2-7b)", "",
              ("| model | additive (overhead + 4 x seq) ms | one packed 4K micro-batch ms | additive / packed - 1 | "
              "one 4K document ms |"), "|---|---|---|---|---|"]
    for r in packing_gap():
        lines.append(f"| {r['model']} | {r['additive_ms']:.1f} | {r['packed_ms']:.1f} | {r['gap']:+.1%} | "
                     f"{r['one_4k_sequence_ms']:.1f} |")
    lines += ["", ("The analytic GEMM curve is affine in tokens, so its additive form is exact for one packed "
              "micro-batch; for the table model the figure above is how far the additive sum is from the "
              "packed micro-batch. A group running k micro-batches is under-charged by (k-1) x "
              "overhead_ms (tens of ms for an 8B model)."), ""]
    (OUT / f"calibration_{stamp}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    nccl.to_csv(OUT / f"calibration_nccl_{stamp}.csv", index=False, float_format="%.4f")
    if g_err.median() > 0.10 or g_err.quantile(0.9) > 0.25:
        sys.exit("GEMM holdout error above the 10 % / 25 % goal")


if __name__ == "__main__":
    main()
