"""Random plans for the bound and polish tests: groups of random shapes and sizes over a long-tail batch."""
import numpy as np

import hetero_sched as hs


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
