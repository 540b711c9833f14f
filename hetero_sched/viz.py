"""Pictures of plans and sweeps (matplotlib, no display needed)."""
from __future__ import annotations

import io

from .plan import Plan


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'hetero-sched[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def gantt_png(plan: Plan) -> bytes:
    """GPUs (grouped by node) against time: one bar per group, its micro-batches as segments, sync after."""
    plt = _pyplot()
    gpn, gpus = plan.cluster.gpus_per_node, plan.cluster.gpus
    fig, ax = plt.subplots(figsize=(10, max(3, 0.18 * gpus + 1.5)))
    colors = plt.get_cmap("tab20").colors
    for k, g in enumerate(plan.groups):
        lo, hi = min(g.ranks), max(g.ranks)
        seq_cost = {i: plan.lengths[i] for i in g.sequence_ids}
        total = sum(seq_cost.values()) or 1
        t = 0.0
        for j, mb in enumerate(g.micro_batches):  # micro-batch width ∝ its share of tokens (approximate)
            w = g.latency_ms * sum(seq_cost[i] for i in mb) / total
            ax.barh(lo + (hi - lo + 1) / 2 - 0.5, w, left=t, height=hi - lo + 0.8, color=colors[k % 20],
                    edgecolor="black", linewidth=0.5, alpha=0.9 if j % 2 == 0 else 0.7)
            t += w
        label = f"TP{g.tp}xCP{g.cp}: {len(g.sequence_ids)} seq, {sum(seq_cost.values()):,} tok"
        ax.text(1, lo + (hi - lo) / 2, label, va="center", fontsize=7)
    ax.axvspan(plan.makespan_ms, plan.step_ms, color="grey", alpha=0.3, label=f"sync {plan.sync_ms:.0f} ms")
    for node in range(gpn, gpus, gpn):
        ax.axhline(node - 0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set(xlabel="time (ms)", ylabel="GPU rank (dashed lines: node boundaries)", ylim=(gpus - 0.5, -0.5),
           title=f"{plan.model.name} on {gpus} x {plan.cluster.gpu}: makespan {plan.makespan_ms:.0f} ms, "
                 f"step {plan.step_ms:.0f} ms")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def anytime_png(rows: list[dict]) -> bytes:
    """Makespan and proven gap against the time limit, one line per backend (median over repeats)."""
    import pandas as pd

    plt = _pyplot()
    frame = pd.DataFrame(rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for backend, d in frame.groupby("backend"):
        m = d.groupby("time_limit_s")[["makespan_ms", "gap"]].median().reset_index()
        a1.plot(m.time_limit_s, m.makespan_ms, marker="o", label=backend)
        a2.plot(m.time_limit_s, 100 * m.gap, marker="o", label=backend)
    if "baseline_ms" in frame:
        a1.axhline(frame.baseline_ms.median(), color="grey", linestyle="--", label="best WLB-LLM")
    a1.set(xscale="log", xlabel="time limit (s)", ylabel="makespan (ms)", title="plan quality")
    a2.set(xscale="log", xlabel="time limit (s)", ylabel="proven gap (%)", title="proven gap to the lower bound")
    a1.legend()
    a2.legend()
    fig.tight_layout()
    return _png(fig)
