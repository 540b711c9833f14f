"""Shared fixtures. First of all: the tests import the installed package, however pytest was started."""
import sys
from pathlib import Path

# `python -m pytest` puts the project root first on sys.path, where the bare hetero_sched folder would
# shadow the installed package — and lacks hetero_sched.baselines and hetero_sched.models, which the
# install maps from baselines/ and models/ (package-dir). `pytest` does not add the root; without it both
# import the same package (an editable install still finds the checkout through its own finder).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

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
