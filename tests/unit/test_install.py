"""The package's data is found from the installed package, not from the source tree."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hetero_sched

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import hetero_sched as hs
from hetero_sched._data import model_data_path, plan_schema
from hetero_sched.workload import prolong_sample
lat = hs.latency_model(hs.ModelSpec.preset('llama2-7b'), hs.Cluster(gpus=16),
                       table=model_data_path('h100', 'Llama-2-7b-hf.csv'))
assert lat.group_latency_ms([4096], 1, 1) > 0
assert prolong_sample().size == 77932
assert {1, 2} <= set(plan_schema()['properties']['schema_version']['enum'])
from hetero_sched.baselines.wlb_llm import wlb_llm_best
print(hs.__file__)
"""


def test_data_is_found_from_another_directory(tmp_path):
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.strip()).resolve()
    if "site-packages" in str(where):  # a non-editable install (CI): the code is not the checkout's
        assert where.parent != REPO / "hetero_sched"
        assert (where.parent / "models" / "h100" / "Llama-2-7b-hf.csv").is_file()  # data installed beside it


def test_tests_use_the_installed_package_in_ci():
    path = Path(hetero_sched.__file__).resolve()
    assert path.name == "__init__.py" and path.parent.name == "hetero_sched"


def test_parquet_batches(tmp_path):
    import pandas as pd

    from hetero_sched.workload import read_batch

    pd.DataFrame({"tokens": [32768, 1024]}).to_parquet(tmp_path / "b.parquet")
    assert read_batch(tmp_path / "b.parquet") == [32768, 1024]


def test_python_m_pytest_tests_the_installed_package(tmp_path):
    """`python -m pytest` from the project root puts the root first on sys.path, where the bare hetero_sched
    folder (without baselines/ and models/, which an install puts inside it) used to shadow a regular
    install. The install is laid out here as pip lays it out, first on PYTHONPATH."""
    site = tmp_path / "site"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "hetero_sched", site / "hetero_sched", ignore=skip)
    for name in ("baselines", "models"):
        shutil.copytree(REPO / name, site / "hetero_sched" / name, ignore=skip)
    env = {**os.environ, "PYTHONPATH": str(site), "HETERO_SCHED_EXPECTED": str(site / "hetero_sched")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                        f"{Path(__file__).resolve()}::test_the_package_under_test_is_the_installed_one"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_the_package_under_test_is_the_installed_one():
    expected = os.environ.get("HETERO_SCHED_EXPECTED")
    if not expected:
        pytest.skip("run by test_python_m_pytest_tests_the_installed_package")
    from hetero_sched.baselines.wlb_llm import wlb_llm_best  # noqa: F401 — only in the installed layout

    assert Path(hetero_sched.__file__).resolve().parent == Path(expected).resolve()
