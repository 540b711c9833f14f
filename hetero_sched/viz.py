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


FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
MAX_GROUP_BARS = 64  # above, the Gantt chart draws one bar per group shape (with its count)


def _png(fig, fmt: str = "png") -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def image_format(suffix: str) -> str:
    fmt = FORMATS.get(suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image format {suffix!r}; use one of {', '.join(FORMATS)}")
    return fmt


def gantt_image(plan: Plan, suffix: str = ".png") -> bytes:
    """The Gantt chart in the format the file name's suffix asks for; by shape above MAX_GROUP_BARS groups."""
    fmt = image_format(suffix)
    fig = _gantt_by_shape(plan) if len(plan.groups) > MAX_GROUP_BARS else _gantt_by_rank(plan)
    return _png(fig, fmt)


def gantt_png(plan: Plan) -> bytes:
    return gantt_image(plan, ".png")


def _gantt_by_shape(plan: Plan):
    """One bar per (TP, CP, PP) shape: its slowest group's latency, with how many groups and GPUs it has."""
    plt = _pyplot()
    shapes: dict = {}
    for k, g in enumerate(plan.groups):
        shapes.setdefault((g.name, g.gpus, g.tp), []).append((g.latency_ms, k))
    order = sorted(shapes, key=lambda s: (-s[1], -s[2], s[0]))
    fig, ax = plt.subplots(figsize=(10, max(3, 0.35 * len(order) + 1.5)))
    colors = plt.get_cmap("tab20").colors
    for y, shape in enumerate(order):
        name, gpus, _ = shape
        lat = [x for x, _ in shapes[shape]]
        ids = [k for _, k in shapes[shape]]
        ax.barh(y, max(lat), color=colors[y % 20], edgecolor="black", linewidth=0.5)
        ax.barh(y, min(lat), color="white", alpha=0.35)
        ax.text(1, y, f"{name}: {len(lat)} group{'s' if len(lat) != 1 else ''} (ids {_id_range(ids)}), "
                      f"{len(lat) * gpus} GPUs, "
                      f"{min(lat):.0f}-{max(lat):.0f} ms", va="center", fontsize=7)
    ax.axvspan(plan.makespan_ms, plan.step_ms, color="grey", alpha=0.3, label=f"exposed sync {plan.sync_ms:.0f} ms")
    ax.set(yticks=range(len(order)), yticklabels=[name for name, _, _ in order], xlabel="time (ms)",
           ylim=(len(order) - 0.5, -0.5), title=f"{plan.model.name} on {plan.cluster.gpus} x {plan.cluster.gpu}: "
           f"{len(plan.groups)} groups by shape, makespan {plan.makespan_ms:.0f} ms, step {plan.step_ms:.0f} ms")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _id_range(ids: list[int]) -> str:
    return f"{ids[0]}" if len(ids) == 1 else f"{min(ids)}-{max(ids)}" if max(ids) - min(ids) + 1 == len(ids) \
        else f"{ids[0]}, {ids[1]}, ..."


def _gantt_by_rank(plan: Plan):
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
        label = f"group {k}: {g.name}, {len(g.sequence_ids)} seq, {sum(seq_cost.values()):,} tok"
        ax.text(1, lo + (hi - lo) / 2, label, va="center", fontsize=7)
    ax.axvspan(plan.makespan_ms, plan.step_ms, color="grey", alpha=0.3, label=f"exposed sync {plan.sync_ms:.0f} ms")
    for node in range(gpn, gpus, gpn):
        ax.axhline(node - 0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set(xlabel="time (ms)", ylabel="GPU rank (dashed lines: node boundaries)", ylim=(gpus - 0.5, -0.5),
           title=f"{plan.model.name} on {gpus} x {plan.cluster.gpu}: makespan {plan.makespan_ms:.0f} ms, "
                 f"step {plan.step_ms:.0f} ms")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def anytime_png(rows: list[dict]) -> bytes:
    """Makespan and proven gap against the time limit, one line per backend (median over repeats)."""
    import pandas as pd

    plt = _pyplot()
    frame = pd.DataFrame(rows)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    markers = dict(zip(("cpsat", "highs", "cbc"), ("o", "s", "^")))
    value = "step_ms" if "objective" in frame and (frame.objective == "step").all() else "makespan_ms"
    for backend, d in frame.groupby("backend"):
        m = d.groupby("time_limit_s")[[value, "gap"]].median().reset_index()
        a1.plot(m.time_limit_s, m[value], marker=markers.get(backend, "x"), label=backend)
        a2.plot(m.time_limit_s, 100 * m.gap, marker=markers.get(backend, "x"), label=backend)
    baseline = f"baseline_{value}"
    if baseline in frame and frame[baseline].notna().any():
        a1.axhline(frame[baseline].median(), color="grey", linestyle="--", label="best WLB-LLM")
    for ax in (a1, a2):
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    a1.set(xscale="log", xlabel="time limit (s)", ylabel=value.replace("_ms", " (ms)"), title="plan quality")
    a2.set(xscale="log", xlabel="time limit (s)", ylabel="proven gap (%)", title="proven gap to the lower bound")
    a1.legend()
    a2.legend()
    fig.tight_layout()
    return _png(fig)
