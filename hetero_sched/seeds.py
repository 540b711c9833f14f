"""The seed document's three example batches and its own ratios (ours vs the best WLB-LLM it listed).

The seed's figures are in other units (they look like one layer's forward pass), its cases 2-3 add two
group latencies where the makespan is their max, and its case-1 WLB list omits TP4·CP2·DP2: compare
ratios, never absolute values."""
from __future__ import annotations

SEED_CASES = {
    "case1": {"lengths": [32768, 1024], "gpus": 16, "seed_ratio": 9.76175 / 6.84,
              "title": "1x32K + 1x1K on 16 GPUs"},
    "case2": {"lengths": [32768] + [1024] * 32, "gpus": 16, "seed_ratio": 20.69325 / 17.947,
              "title": "1x32K + 32x1K on 16 GPUs"},
    "case3": {"lengths": [65536] + [2048] * 32, "gpus": 36, "seed_ratio": 26.26525 / 18.81,
              "title": "1x64K + 32x2K on 36 GPUs"},
}
