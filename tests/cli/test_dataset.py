"""hetero-sched plan-dataset: steps of an epoch planned locally or on Ray, resumable, summarised."""
import json

import pytest
from test_cli import run

import hetero_sched as hs
from hetero_sched.dataset import read_plans, summarise
from hetero_sched.workload import synthetic

COMMON = ["--gpus", "16", "--tokens-per-step", "65536", "--work-limit", "0.2", "--delay-steps", "2",
          "--context", "65536"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    lengths = synthetic("prolong:tokens=400000,context=131072,seed=4")
    (folder / "lens.txt").write_text("\n".join(map(str, lengths)))
    return folder, lengths


@pytest.fixture(scope="module")
def local_run(data):
    folder, _ = data
    r = run("plan-dataset", str(folder / "lens.txt"), *COMMON, "--workers", "2", "--out", str(folder / "local"),
            timeout=300)
    assert r.returncode == 0, r.stderr
    return folder / "local"


def _strip(folder):
    out = []
    for d in read_plans(folder):
        d["solver"].pop("wall_s")
        out.append(json.dumps(d, sort_keys=True))
    return out


def test_every_document_once_and_every_plan_valid(data, local_run):
    _, lengths = data
    records = read_plans(local_run)
    rows = [r for d in records for r in d["documents"]]
    assert sorted(rows) == list(range(len(lengths)))
    assert [d["step"] for d in records] == list(range(len(records)))
    for d in records:
        plan = hs.Plan.from_dict(d)
        assert plan.validate() == []
        assert plan.lengths == [min(lengths[r], 65536) for r in d["documents"]]


def test_summary_recomputes_from_the_plans(local_run):
    stated = json.loads((local_run / "summary.json").read_text())
    again = summarise(read_plans(local_run))
    for key in ("steps", "documents", "tokens", "epoch_ms", "wlb_epoch_ms", "megatron_epoch_ms"):
        assert stated[key] == pytest.approx(again[key], rel=1e-12)
    assert stated["epoch_ms"] == pytest.approx(sum(d["step_ms"] for d in read_plans(local_run)))
    assert (local_run / "summary.md").exists() and (local_run / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_a_resumed_run_equals_an_uninterrupted_one(data, local_run):
    folder, _ = data
    part = folder / "resumed"
    part.mkdir()
    lines = (local_run / "plans.jsonl").read_text().splitlines(keepends=True)
    (part / "plans.jsonl").write_text("".join(lines[:3]) + lines[3][:40])  # a torn line, as Ctrl-C may leave
    (part / "manifest.json").write_text((local_run / "manifest.json").read_text())
    r = run("plan-dataset", str(folder / "lens.txt"), *COMMON, "--out", str(part), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "3 already planned" in r.stdout
    assert _strip(part)[3:] == _strip(local_run)[3:] and len(_strip(part)) == len(_strip(local_run))


def test_ray_gives_the_same_plans(data, local_run):
    pytest.importorskip("ray")
    folder, _ = data
    r = run("plan-dataset", str(folder / "lens.txt"), *COMMON, "--executor", "ray", "--workers", "2",
            "--out", str(folder / "ray"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert _strip(folder / "ray") == _strip(local_run)


def test_another_run_is_not_resumed_into(data, local_run):
    folder, _ = data
    r = run("plan-dataset", str(folder / "lens.txt"), *COMMON[:-2], "--context", "32768", "--out", str(local_run))
    assert r.returncode == 2 and "another dataset or other options" in r.stderr


def test_text_column_with_a_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["alpha", "beta", "gamma", "delta"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + ["[UNK]"])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    docs = [" ".join(words[i % 4] for i in range(n)) for n in (3000, 500, 1200, 40)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    r = run("plan-dataset", str(tmp_path / "docs.jsonl"), "--column", "text", "--tokenizer",
            str(tmp_path / "tokenizer.json"), "--gpus", "8", "--tokens-per-step", "4000", "--work-limit", "0.2",
            "--out", str(tmp_path / "out"), timeout=300)
    assert r.returncode == 0, r.stderr
    records = read_plans(tmp_path / "out")
    assert sorted(s["length"] for d in records for s in d["sequences"]) == [40, 500, 1200, 3000]


BAD = [
    ("lens.csv", "len\n100\n200\n", ["--column", "length"], "no column 'length'"),
    ("neg.txt", "100\n-5\n", [], "-5"),
    ("frac.txt", "100\n2.5\n", [], "2.5"),
    ("huge.txt", "100\n90000000\n", ["--context", "100000000"], "document 1"),
    ("ok.txt", "100\n200\n", ["--executor", "ray", "--address", "127.0.0.1:1"], "Ray cluster"),
    ("long.txt", "100\n1500\n", ["--context", "2000"], "--tokens-per-step 1000 is below --context 2000"),
    ("ok.txt", "100\n200\n", ["--shuffle", "-1"], "--shuffle"),
    ("text.jsonl", json.dumps({"text": "word " * 700}) + "\n", ["--column", "text"], "a text column needs --tokenizer"),
]


@pytest.mark.parametrize("name,text,extra,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, name, text, extra, needle):
    if "ray" in extra:
        pytest.importorskip("ray")
    (tmp_path / name).write_text(text)
    r = run("plan-dataset", str(tmp_path / name), "--gpus", "8", "--tokens-per-step", "1000", *extra,
            "--out", str(tmp_path / "out"), timeout=180)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert needle in r.stderr and len(r.stderr) < 300  # a document's text is quoted, not printed whole
    assert not (tmp_path / "out").exists()


def test_a_run_writes_nothing_to_stderr_through_a_pipe(tmp_path):
    (tmp_path / "l.txt").write_text("100\n200\n300\n")
    r = run("plan-dataset", str(tmp_path / "l.txt"), "--gpus", "8", "--tokens-per-step", "1000", "--work-limit",
            "0.1", "--out", str(tmp_path / "out"), timeout=180)
    assert r.returncode == 0 and r.stderr == "", repr(r.stderr)
    assert r.stdout.startswith("1 step (0 already planned, 1 now)")
