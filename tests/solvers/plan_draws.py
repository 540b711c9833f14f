"""Random plans for the bound and polish tests (groups of random shapes and sizes over a long-tail batch),
and a layout family's tiered step bound."""
import numpy as np

import hetero_sched as hs
from hetero_sched.milp import layouts


def long_tail(rng, n, cap=32768):
    """n lengths, log-normal around 2K (sigma 1.25), clipped to [128, cap]."""
    return [int(min(max(x, 128), cap)) for x in rng.lognormal(np.log(2048), 1.25, size=n)]


def random_plan(rng, lengths, lat, tps):
    """A random plan whose groups have TP degrees in tps (None when the draw does not fit or place)."""
    ids = list(rng.permutation(len(lengths)))
    groups, left = [], lat.cluster.gpus
    while ids and left:
        tp = int(rng.choice([t for t in tps if t <= left]))
        cp = int(rng.integers(1, left // tp + 1))
        take = [int(i) for i in ids[:int(rng.integers(1, len(ids) + 1))]]
        groups.append((tp, cp, take))
        ids, left = ids[len(take):], left - tp * cp
    if ids or any(max(lengths[i] for i in take) > lat.max_tokens(tp, cp) for tp, cp, take in groups):
        return None
    try:
        return hs.Plan.build(lengths, groups, lat)
    except ValueError:
        return None


def family_bound(full, tables, lat, t, mixed):
    """(the family's instance, its plain waits bound, the Family with its tiered waits bound) for plans whose
    smallest TP is t (with larger ones when mixed)."""
    cols = np.array([c for c, cfg in enumerate(full.configs) if (cfg[0] >= t if mixed else cfg[0] == t)])
    sub = full.subset(cols)
    waits = layouts.first_penalties(tables, full.configs, lat, lat.sync_parts([t])[2])[cols]
    plain = layouts.delay_area_bound(sub, waits, 1e12)
    fam = layouts.Family(t, mixed, 0.0)
    fam.delayed = layouts.tiered_delay_bound(sub, tables, cols, lat, t, plain, 1e6)
    return sub, plain, fam
