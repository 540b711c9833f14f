"""Plan files as the commands read them (validate, show, run, the torchrun entry): the text, the published
JSON schema (hetero_sched/schema/), the plan, the step model it names, and whether it can run on a world
of N processes. No torch here: `hetero-sched run` and `python -m hetero_sched.runtime` check a plan with
these functions before any process or process group exists."""
from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from pathlib import Path

from .latency import LatencyModel, latency_model
from .plan import Plan

QUOTE_CHARS = 40  # a value quoted in an error message is cut here


def read_plan(path) -> Plan:
    """The plan in file `path`: readable, JSON, valid against the published schema, loadable."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read plan {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return Plan.from_json(text)


# ---- the published schema -------------------------------------------------------------------------------------
@cache
def _schemas() -> dict:
    """Every shipped plan schema, by the schema_version it describes."""
    out = {}
    for entry in resources.files("hetero_sched").joinpath("schema").iterdir():
        if entry.name.endswith(".json"):
            schema = json.loads(entry.read_text())
            field = schema.get("properties", {}).get("schema_version", {})
            for version in field.get("enum", [field["const"]] if "const" in field else []):
                out[version] = schema
    return out


@cache
def _validator(version: int):
    import jsonschema
    from jsonschema import validators

    base = jsonschema.Draft202012Validator
    # JSON 1.0 is a float to Python: an integer field must hold an integer, as every reader of a plan assumes
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return validators.extend(base, type_checker=checker)(_schemas()[version])


def check_schema(data) -> None:
    """ValueError naming the first field of `data` (a parsed plan file) that breaks the published schema.
    An object of a schema_version no shipped schema describes is left to Plan.from_dict to refuse."""
    if not isinstance(data, dict) or data.get("schema_version") not in _schemas():
        return
    from jsonschema.exceptions import best_match

    schema = _schemas()[data["schema_version"]]
    reduced = _reduced(data, schema)  # the same verdict and first error; a plan of 65,536 sequences took 5 s
    error = best_match(_validator(data["schema_version"]).iter_errors(data if reduced is None else reduced))
    if error is not None:
        raise ValueError(f"malformed plan JSON: {schema_message(error)}")


_FAILS = object()  # an item of a long array that the schema refuses: validate the whole document


def _reduced(data, schema):
    """data with every long array of simple items (integers, arrays of them, objects of integers: what
    sequences, ranks, sequence ids and micro-batches are) cut to its first items once each item is checked
    here as the schema would check it: the schema then has the same verdict on the rest. None when some
    item fails here (the full document is validated then, for the schema's own message)."""
    out = _reduce(data, schema)
    return None if out is _FAILS else out


def _reduce(data, schema):
    if not isinstance(schema, dict):
        return data
    if schema.get("type") == "array" and isinstance(data, list) and "items" in schema:
        keep = max(1, schema.get("minItems", 0))
        item = _simple(schema["items"])
        if item is not None and len(data) > keep:
            return data[:keep] if all(map(item, data)) else _FAILS
        out = [_reduce(x, schema["items"]) for x in data]
        return _FAILS if any(x is _FAILS for x in out) else out
    if isinstance(data, dict) and isinstance(schema.get("properties"), dict):
        out = dict(data)
        for key, sub in schema["properties"].items():
            if key in data:
                out[key] = _reduce(data[key], sub)
                if out[key] is _FAILS:
                    return _FAILS
        return out
    return data


def _simple(schema):
    """A predicate equal to the schema's verdict on one value, for integers with a minimum, arrays of such
    with minItems, and objects of such with required keys; None for any other schema."""
    if not isinstance(schema, dict):
        return None
    keys = set(schema) - {"description"}
    if keys <= {"type", "minimum"} and schema.get("type") == "integer":
        low = schema.get("minimum", -math.inf)
        return lambda x: type(x) is int and x >= low
    if keys <= {"type", "items", "minItems"} and schema.get("type") == "array" and "items" in schema:
        inner, least = _simple(schema["items"]), schema.get("minItems", 0)
        return None if inner is None else lambda x: type(x) is list and len(x) >= least and all(map(inner, x))
    if keys <= {"type", "required", "properties"} and schema.get("type") == "object":
        props = {k: _simple(v) for k, v in schema.get("properties", {}).items()}
        if any(p is None for p in props.values()):
            return None
        need = list(schema.get("required", []))
        return lambda x: type(x) is dict and all(k in x for k in need) and \
            all(p(x[k]) for k, p in props.items() if k in x)
    return None


def schema_message(error) -> str:
    """One line for a jsonschema error: the field's path (`groups[0].tp`) and what it must hold."""
    where = field_path(error.absolute_path)
    kind, want, got = error.validator, error.validator_value, quote(error.instance)
    if kind == "required":
        missing = next((k for k in want if k not in error.instance), want[0])
        return f"{field_path([*error.absolute_path, missing])} is missing"
    if kind == "type":
        names = [want] if isinstance(want, str) else list(want)
        return f"{where} must be {_alternatives([_TYPE_NAMES.get(t, t) for t in names])}, got {got}"
    if kind in ("enum", "const"):
        allowed = want if kind == "enum" else [want]
        return f"{where} must be {_alternatives([json.dumps(v) for v in allowed])}, got {got}"
    if kind in ("minimum", "maximum"):
        return f"{where} must be {'>=' if kind == 'minimum' else '<='} {want}, got {got}"
    if kind == "minItems":
        return f"{where} must hold at least {want} item{'s' if want != 1 else ''}, got {got}"
    if kind == "pattern":
        return f"{where} must match {want}, got {got}"
    return f"{where}: {error.message[:2 * QUOTE_CHARS]}"


def _alternatives(words: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string", "array": "a list",
               "object": "an object", "boolean": "true or false", "null": "null"}


def field_path(parts) -> str:
    """`groups[0].tp` from ['groups', 0, 'tp']; 'the plan' for the top level."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "the plan"


def quote(value) -> str:
    """A value as JSON, cut to QUOTE_CHARS characters."""
    text = json.dumps(value, default=str)
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS - 3] + "..."


# ---- the step model a plan names --------------------------------------------------------------------------------
def step_model_for(plan: Plan, table=None, calibration=None) -> LatencyModel | None:
    """The step model rebuilt with the --table / --calibration files given (None when neither is: the plan
    names its own); ValueError when a file is not the one the plan was made with."""
    if table is None and calibration is None:
        return None
    named = plan.latency_model
    if table is None and named.get("table_sha256"):  # a table shipped with this tool is found by its hash
        from ._data import shipped_table_by_sha
        table = shipped_table_by_sha(plan.cluster.gpu, named["table_sha256"])
    options = {k: named[k] for k in ("recompute", "overlap_param_gather") if k in named}  # as the plan was made
    lat = latency_model(plan.model, plan.cluster, table=table, calibration=calibration, **options)
    given = lat.describe()
    _same_file("calibration", calibration, given.get("calibration_sha256"), named.get("calibration_sha256"))
    _same_file("table", table, given.get("table_sha256"), named.get("table_sha256"))
    if given != named:
        raise ValueError(f"the step model given ({given}) is not the plan's ({named})")
    return lat


def _same_file(what: str, path, sha: str | None, planned: str | None) -> None:
    option = f"--{what}"
    if path is None and planned:
        raise ValueError(f"the plan was made with a {what} file (sha256 {planned[:12]}...); pass it with {option}")
    if path is not None and not planned:
        raise ValueError(f"the plan was made without a {what} file; {option} {str(path)!r} does not belong to it")
    if sha != planned:
        raise ValueError(f"{option} {str(path)!r} is not the file the plan was made with: its sha256 is "
                         f"{sha[:12]}..., the plan's {planned[:12]}...")


# ---- running a plan --------------------------------------------------------------------------------------------
def check_runnable(plan: Plan, world_size: int, lat: LatencyModel | None = None, source: str = "the plan") -> None:
    """ValueError unless `plan` is valid (against `lat`, else the model it names) and has one GPU per process
    of a world of `world_size`."""
    problems = plan.validate(lat)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"{source} is not a valid plan: {problems[0]}{more}")
    if world_size != plan.cluster.gpus:
        raise ValueError(f"a world of {world_size} processes does not match the plan's {plan.cluster.gpus} GPUs "
                         "(one process a GPU)")


MAX_TIMEOUT_S = 86_400.0  # a day: a collective that waits longer is stuck (and a timedelta overflows past ~1e14 s)


def check_run_options(max_tokens: int, timeout_s: float) -> None:
    """The options of a demo step (`hetero-sched run`, the torchrun entry), checked before any process starts."""
    if max_tokens < 2:
        raise ValueError(f"--max-tokens must be >= 2, got {max_tokens}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:  # also refuses nan
        raise ValueError(f"--timeout must be > 0 and <= {MAX_TIMEOUT_S:.0f} seconds, got {timeout_s:g}")
