"""The package's data is found from the installed package, not from the source tree."""
import subprocess
import sys
from pathlib import Path

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
assert plan_schema()['properties']['schema_version']['const'] == 1
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
