"""Batches of sequence lengths: files (txt/csv/json/jsonl/parquet) and seeded synthetic generators."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._data import model_data_path
from .milp.instance import check_lengths

MAX_SEQUENCES = 1_000_000  # beyond this a batch is refused (a step never holds that many documents)


MAX_LENGTH = 2**40  # tokens; far beyond any context, small enough for every integer type downstream
_SUFFIX = {"k": 1024, "m": 1024**2}


def parse_length(t: str) -> int:
    """'32768', '32K' or '1M' (binary suffixes: 32K = 32768) → a positive integer ≤ MAX_LENGTH."""
    t = t.strip()
    scale = _SUFFIX.get(t[-1:].lower(), 1)
    digits = t[:-1] if scale > 1 else t
    if not digits.isdigit():
        raise ValueError(f"sequence length {t!r} is not a positive integer (suffixes K and M allowed)")
    value = int(digits) * scale
    if value <= 0 or value > MAX_LENGTH:
        raise ValueError(f"sequence length {t!r} is out of range 1..{MAX_LENGTH}")
    return value


def parse_lengths(text: str) -> list[int]:
    """'32768,1K' → [32768, 1024]; each item a positive integer, optionally with a K or M suffix."""
    return check_lengths([parse_length(t) for t in text.split(",")])


def read_batch(path: str | Path, column: str | None = None) -> list[int]:
    """Token lengths from a file, by extension (see README 'Batches')."""
    path = Path(path)
    values = read_values(path, column)
    if not values:
        raise ValueError(f"batch file {str(path)!r} holds no sequence lengths")
    if len(values) > MAX_SEQUENCES:
        raise ValueError(f"batch file {str(path)!r} holds {len(values)} sequences > limit {MAX_SEQUENCES}")
    return check_lengths([_as_int(v, path, k) for k, v in enumerate(values)])


READERS = (".txt", ".csv", ".json", ".jsonl", ".parquet")


def read_values(path: str | Path, column: str | None = None) -> list:
    """The raw entries of a length file (one per row), by extension."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder, not a file of lengths")
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist")
    readers = dict(zip(READERS, (_read_txt, _read_csv, _read_json, _read_jsonl, _read_parquet)))
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise ValueError(f"unknown format {suffix!r} of {str(path)!r}; use one of {', '.join(readers)}")
    return readers[suffix](path, column)


def as_length(v, path, k) -> int:
    """Entry k of a length file as a positive integer; ValueError naming the row otherwise."""
    value = _as_int(v, path, k)
    if value <= 0:
        raise ValueError(f"{str(path)!r}: entry {k} is {quote_value(v)}, not a positive token length")
    return value


QUOTE_CHARS = 40  # an entry quoted in an error is cut here (a text column holds whole documents)


def quote_value(v) -> str:
    """repr(v), cut to QUOTE_CHARS characters."""
    text = repr(v)
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS - 3]}... ({len(str(v)):,} characters)"


def _as_int(v, path, k):
    if isinstance(v, bool):
        raise ValueError(f"{str(path)!r}: entry {k} is {quote_value(v)}, not a token length")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    hint = "; a text column needs --tokenizer" if isinstance(v, str) and len(v) > QUOTE_CHARS else ""
    raise ValueError(f"{str(path)!r}: entry {k} is {quote_value(v)}, not a token length{hint}")


def _read_txt(path, column):
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _read_csv(path, column):
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"cannot parse {str(path)!r}: {exc}") from None
    return _column(frame, path, column)


def _read_parquet(path, column):
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError:
        raise ValueError("reading parquet needs pyarrow: pip install 'hetero-sched[parquet]'") from None
    except Exception as exc:  # noqa: BLE001 — pyarrow raises its own error types for corrupt files
        raise ValueError(f"cannot read parquet {str(path)!r}: {exc}") from None
    return _column(frame, path, column)


def _column(frame, path, column):
    if column is None:
        if frame.shape[1] != 1:
            raise ValueError(f"{str(path)!r} has columns {list(frame.columns)}; choose one with --column")
        column = frame.columns[0]
    if column not in frame.columns:
        raise ValueError(f"{str(path)!r} has no column {column!r} (columns: {list(frame.columns)})")
    return frame[column].tolist()


def _read_json(path, column):
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"cannot parse {str(path)!r}: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"{str(path)!r} must hold a JSON list of token lengths")
    return data


def _read_jsonl(path, column):
    out = []
    for k, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(path)!r} line {k + 1}: {exc}") from None
        out.append(_jsonl_length(obj, path, k, column))
    return out


def _jsonl_length(obj, path, k, column):
    if isinstance(obj, dict):
        for key in ([column] if column else ["length", "num_tokens", "tokens", "input_ids"]):
            if key in obj:
                value = obj[key]
                return len(value) if isinstance(value, list) else value
        raise ValueError(f"{str(path)!r} line {k + 1}: no length field ({column or 'length/num_tokens/tokens/input_ids'})")
    if isinstance(obj, list):
        return len(obj)  # a list of token ids
    return obj


# ---- synthetic batches ---------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def prolong_sample() -> np.ndarray:
    """77,932 document lengths sampled from the ProLong data mix (see models/README.md)."""
    return np.array(json.loads(model_data_path("", "lengths/prolong_lengths.json").read_text()), dtype=np.int64)


def synthetic(spec: str) -> list[int]:
    """'prolong:tokens=1048576,context=131072,seed=0' or 'lognormal:n=256,context=131072,seed=0'."""
    kind, _, args = spec.partition(":")
    params = _parse_params(args, spec)
    seed = params.pop("seed", 0)
    context = params.pop("context", 131072)
    rng = np.random.default_rng(seed)
    if kind == "prolong":
        tokens = params.pop("tokens", 1 << 20)
        _no_extra(params, spec)
        return _prolong(rng, tokens, context)
    if kind == "lognormal":
        n = params.pop("n", 256)
        median = params.pop("median", 2048)
        sigma = params.pop("sigma_x100", 150) / 100
        _no_extra(params, spec)
        if n <= 0 or n > MAX_SEQUENCES:
            raise ValueError(f"n={n} must be in 1..{MAX_SEQUENCES}")
        draws = rng.lognormal(np.log(median), sigma, size=n)
        return [int(min(max(x, 128), context)) for x in draws]
    raise ValueError(f"unknown synthetic generator {kind!r} in {spec!r}; use prolong:… or lognormal:…")


def _prolong(rng, tokens: int, context: int) -> list[int]:
    sample = prolong_sample()
    out, total = [], 0
    while total < tokens:
        x = int(min(sample[rng.integers(sample.size)], context))
        out.append(x)
        total += x
        if len(out) > MAX_SEQUENCES:
            raise ValueError(f"token budget {tokens} needs more than {MAX_SEQUENCES} documents")
    return out


def _parse_params(args: str, spec: str) -> dict[str, int]:
    params = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = item.partition("=")
        try:
            params[key] = int(value)
        except ValueError:
            raise ValueError(f"synthetic parameter {item!r} in {spec!r} must be key=integer") from None
        if not eq or params[key] <= 0 and key != "seed" or params[key] < 0:
            raise ValueError(f"synthetic parameter {item!r} in {spec!r} must be a positive integer")
    return params


def _no_extra(params, spec):
    if params:
        raise ValueError(f"unknown synthetic parameters {sorted(params)} in {spec!r}")
