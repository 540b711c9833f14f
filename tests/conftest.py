import numpy as np
import pytest

import hetero_sched as hs


@pytest.fixture(scope="session")
def llama3():
    return hs.ModelSpec.preset("llama3-8b")


@pytest.fixture(scope="session")
def lat16(llama3):
    return hs.latency_model(llama3, hs.Cluster(gpus=16))


def random_batch(rng: np.random.Generator, n: int, lo: int = 512, hi: int = 65536) -> list[int]:
    """Long-tailed lengths: log-uniform between lo and hi."""
    return [int(x) for x in np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))]
