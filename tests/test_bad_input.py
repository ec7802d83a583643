"""Generated bad input at every input surface: no traceback, no hang, no nonsense answer.

Hypothesis builds malformed and extreme inputs for the surfaces a user reaches:
scenario TOML files, model TOML files, Hugging Face ``config.json`` files,
``--set`` overrides, and the flags of ``load``, ``comm``, ``plan``, ``sweep`` and
``compare``. Each case runs the CLI in-process through click's ``CliRunner``
(a sample runs as real subprocesses) and must end in one of two ways:

* exit 2 with one short line ``error: ...`` on stderr, no traceback, no
  exception other than ``SystemExit``, and no file written;
* exit 0 with, under ``--json``, only finite numbers (no infinity or NaN was
  turned into ``null``) and non-negative times, sizes, rates and prices.

Any other exit (1 from an uncaught exception, a hang) fails the case. The
messages must not come from the CLI's last-resort net for overflow and
recursion (``input too large to compute``): the bounds in moesim/limits.py have
to catch such values where they are parsed.

``MOESIM_BAD_INPUT_EXAMPLES`` scales the number of examples of every test (1 =
the default counts, 10 = ten times as many) for a longer search, and
``MOESIM_BAD_INPUT_RANDOM=1`` draws different examples on every run (by default
the examples are derandomized, the same on every run).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moesim.cli import common
from moesim.cli.main import cli
from moesim.model import ModelSpec
from moesim.scenario import Scenario

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((REPO / "scenarios").glob("*.toml"))
MODELS = sorted((REPO / "scenarios" / "models").glob("*.toml"))
PROFILES = sorted((REPO / "hardware_profiles").glob("*.toml"))
HF_CONFIGS = sorted(p for p in (REPO / "tests" / "data" / "hf_configs").glob("*.json") if not p.stem.startswith("bad-"))

SCALE = max(1, int(os.environ.get("MOESIM_BAD_INPUT_EXAMPLES", "1")))
#: MOESIM_BAD_INPUT_RANDOM=1 draws new examples each run (CI runs the same derandomized ones every time)
RANDOM = bool(os.environ.get("MOESIM_BAD_INPUT_RANDOM"))
#: every generated case, counted per test (printed by test_the_suite_generated_enough_cases)
CASES: dict[str, int] = {}


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ----------------------------------------------------------------------------- the checks

#: a JSON key of a time, size, rate, count of tokens or price: must be finite and >= 0 when a number
UNIT_KEY = re.compile(r"(_s|_bytes|_bytes_per_s|_flops|_flops_per_s|tokens_per_s|tokens_per_s_per_gpu|_usd|"
                      r"_usd_per_hour|usd_per_million_tokens|gpu_hours_per_million_tokens|_tokens|_frac)$")
#: keys whose value may be negative by definition
SIGNED_KEY = re.compile(r"(headroom|error|delta|diff|ratio_minus|saving)")
TEXT_NONSENSE = re.compile(r"(?<![\w.])(inf|-inf|nan)(?![\w])", re.IGNORECASE)


NON_FINITE = "<non-finite>"
#: keys where a non-finite value is meaningful and printed as null on purpose: the bandwidth of a transfer that
#: moves nothing (one rank) or of a link that is not modelled (PCIe in the topology summary)
NON_FINITE_OK = re.compile(r"(algbw|busbw|capacity)_bytes_per_s$")


@contextmanager
def non_finite_spy() -> Iterator[list[float]]:
    """Mark every infinite or NaN float that ``--json`` output would print as ``null`` (see check_result)."""
    seen: list[float] = []
    real = common.to_jsonable

    def spy(obj: Any) -> Any:
        if isinstance(obj, float) and not math.isfinite(obj):
            seen.append(obj)
            return NON_FINITE
        return real(obj)

    common.to_jsonable = spy
    try:
        yield seen
    finally:
        common.to_jsonable = real


def _numbers(obj: Any, key: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, str(k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v, key)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield key, obj


def _strings(obj: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, str(k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, key)
    elif isinstance(obj, str):
        yield key, obj


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def check_result(args: list[str], code: int, stdout: str, stderr: str, exception: BaseException | None,
                 non_finite: list[float], before: dict[str, int], after: dict[str, int]) -> None:
    """The contract of the module docstring for one run."""
    where = f"moesim {' '.join(a if len(a) < 80 else a[:60] + '...' for a in args)}"
    assert "Traceback" not in stderr, f"{where}\n{stderr}"
    assert exception is None or isinstance(exception, SystemExit), f"{where}: {exception!r}"
    assert code in (0, 2), f"{where}: exit {code}\n{stderr[-2000:]}"
    if code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, f"{where}: {len(lines)} lines\n{stderr[:2000]}"
        line = lines[0]
        assert line.startswith("error: ") and len(line) <= 1300, f"{where}: {line[:300]}"
        assert "input too large to compute" not in line, f"{where}: the bounds missed it: {line}"
        assert after == before, f"{where}: files changed on error: {sorted(set(after) ^ set(before))}"
        return
    if "--json" in args:
        data = json.loads(stdout)
        for key, v in _strings(data):
            assert v != NON_FINITE or NON_FINITE_OK.search(key), f"{where}: {key} is not finite (printed as null)"
        for key, v in _numbers(data):
            assert math.isfinite(v), f"{where}: {key} = {v}"
            if UNIT_KEY.search(key) and not SIGNED_KEY.search(key):
                assert v >= 0, f"{where}: {key} = {v} is negative"
    else:
        assert not TEXT_NONSENSE.search(stdout), f"{where}: printed {TEXT_NONSENSE.search(stdout).group()!r}"


_RUNNER = CliRunner()


def run_case(name: str, args: list[str], folder: Path) -> tuple[int, str]:
    """Run ``moesim ARGS`` in-process and check it (``folder`` holds the inputs and receives any output)."""
    CASES[name] = CASES.get(name, 0) + 1
    before = listing(folder)
    with non_finite_spy() as seen:
        res = _RUNNER.invoke(cli, args, catch_exceptions=True)
    check_result(args, res.exit_code, res.stdout, res.stderr, res.exception, seen, before, listing(folder))
    return res.exit_code, res.stderr


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="moesim-bad-") as d:
        yield Path(d)


# ----------------------------------------------------------------------------- hostile values

HUGE_INTS = [2**31, 2**63 - 1, 2**63, 2**64, 10**12, 10**15, 10**18, 10**30, 10**300]
NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 7, 8, 64, 255, 256, 1000, 4096, 65536, 10**6, *HUGE_INTS, -(10**30)]),
    st.sampled_from([0.0, -0.0, 0.5, 1.5, -2.5, 1e-300, 1e30, 1e308, math.inf, -math.inf, math.nan]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
TEXTS = st.one_of(
    st.sampled_from(["", "x", "a" * 300, "b" * 100_000, "../../../etc/passwd", "/dev/zero", "nul\x00byte", "ü",
                     "zipf:1e308", "zipf:-1", "zipf:nan", "dirichlet:0", "dirichlet:1e-300", "hist:", "hist:1,2,3",
                     "hist:" + ",".join(["1"] * 5000), "hist:0,0,0,0,0,0,0,0", "hist:-1,2", "hist:/dev/zero.json",
                     "uniform", "uniform:3", "1e30", "inf", "nan", "true", "[]", "{}", "h100-sxm", "mixtral-8x7b",
                     "fp7", "bf16", "serve", "train", "x.toml", "x.json"]),
    st.text(max_size=40),
)
LEAVES = st.one_of(NUMBERS, TEXTS, st.booleans(), st.none())
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every field of a pydantic model, through nested models and unions."""
    from moesim.errors import _model_classes

    out = []
    for name, info in cls.model_fields.items():
        if name == "base_dir":
            continue
        path = prefix + name
        out.append(path)
        for sub in _model_classes(info.annotation):
            out += field_paths(sub, path + ".")
    return sorted(set(out))


SCENARIO_FIELDS = field_paths(Scenario)
MODEL_FIELDS = field_paths(ModelSpec)


# ----------------------------------------------------------------------------- TOML and JSON writers

def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if abs(v) < 10**4000 else "1" + "0" * 4500
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if v is None:
        return '""'
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def toml_dumps(d: dict[str, Any]) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{toml_key(k)}]")
            lines += [f"{toml_key(str(kk))} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def set_path(d: dict[str, Any], path: str, value: Any) -> None:
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def del_path(d: dict[str, Any], path: str) -> None:
    node = d
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return
    node.pop(parts[-1], None)


def load_toml(p: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(p.read_text())


#: file bodies that are not valid input whatever their content (encoding, nesting, size)
BROKEN_BODIES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\xff\xfe" + 'model = "x"'.encode("utf-16-le"), b"\x00\x01\x02\xff" * 8, b"\x80abc",
                     b"a = " + b"[" * 5000 + b"]" * 5000, b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000,
                     b"[" + b".".join([b"t"] * 3000) + b"]\nx = 1\n", b"[" * 20000, b"{" * 20000,
                     b'{"a": ' * 10000 + b"1" + b"}" * 10000, b"1" * 6000, b"x = " + b"9" * 6000,
                     b'{"model_type": "mixtral", "hidden_size": ' + b"9" * 6000 + b"}", b"NaN", b"[1, 2",
                     b"\xef\xbb\xbf" + b"name = 1", b"\t\n  \n", b"", b'"\\ud800"', b'{"model_type": []}',
                     b'{"model_type": {"a": 1}}', b'{"model_type": "mixtral", "num_hidden_layers": Infinity}']),
)


# ----------------------------------------------------------------------------- scenario and model files

@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """``base`` with one to three fields set to hostile values, removed, or an unknown key added."""
    raw = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.one_of(st.sampled_from(fields), st.sampled_from(fields).map(lambda f: f + "_typo"),
                              st.text(min_size=1, max_size=12)))
        op = draw(st.sampled_from(["set", "set", "set", "delete"]))
        if op == "delete":
            del_path(raw, path)
        else:
            try:
                set_path(raw, path, draw(VALUES))
            except (TypeError, AttributeError):
                pass
    return raw


@given(data=st.data())
@examples(140)
def test_generated_scenario_files_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    base_path = data.draw(st.sampled_from(SCENARIOS))
    base = load_toml(base_path)
    with workdir() as d:
        f = d / "scenario.toml"
        if data.draw(st.integers(0, 9)) == 0:
            f.write_bytes(data.draw(BROKEN_BODIES))
        else:
            f.write_text(toml_dumps(data.draw(mutated(base, SCENARIO_FIELDS))), encoding="utf-8")
        cmd = data.draw(st.sampled_from([["estimate", str(f), "--json"], ["estimate", str(f)],
                                         ["load", str(f), "--json"]]))
        run_case("scenario files", cmd, d)


@given(data=st.data())
@examples(40)
def test_generated_model_files_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    base = load_toml(data.draw(st.sampled_from(MODELS)))
    with workdir() as d:
        f = d / "model.toml"
        if data.draw(st.integers(0, 9)) == 0:
            f.write_bytes(data.draw(BROKEN_BODIES))
        else:
            f.write_text(toml_dumps(data.draw(mutated(base, MODEL_FIELDS))), encoding="utf-8")
        cmd = data.draw(st.sampled_from([["models", "show", str(f), "--json"],
                                         ["estimate", "--set", f"model={json.dumps(str(f))}", "--json"]]))
        run_case("model files", cmd, d)


def _hf_paths(raw: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in raw.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _hf_paths(v, f"{prefix}{k}.")
    return out


@given(data=st.data())
@examples(100)
def test_generated_config_json_files_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    base = json.loads(data.draw(st.sampled_from(HF_CONFIGS)).read_text())
    with workdir() as d:
        f = d / "config.json"
        if data.draw(st.integers(0, 7)) == 0:
            f.write_bytes(data.draw(BROKEN_BODIES))
        else:
            raw = data.draw(mutated(base, _hf_paths(base) + ["model_type"]))
            text = json.dumps(raw, allow_nan=True) if data.draw(st.booleans()) else json.dumps(raw)
            f.write_text(text, encoding="utf-8")
        cmd = data.draw(st.sampled_from([["models", "show", str(f), "--json"], ["models", "show", str(f)],
                                         ["estimate", "--set", f"model={json.dumps(str(f))}", "--json"],
                                         ["load", "--model", str(f), "--json"]]))
        run_case("config.json files", cmd, d)


@given(data=st.data())
@examples(40)
def test_generated_hardware_profiles_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    base = load_toml(data.draw(st.sampled_from(PROFILES)))
    with workdir() as d:
        f = d / "profile.toml"
        if data.draw(st.integers(0, 7)) == 0:
            f.write_bytes(data.draw(BROKEN_BODIES))
        else:
            paths = [p for p in _hf_paths(base) if not p.endswith(".source")]
            f.write_text(toml_dumps(data.draw(mutated(base, paths))), encoding="utf-8")
        cmd = data.draw(st.sampled_from([["hardware", "show", str(f), "--json"],
                                         ["comm", "all-reduce", "-H", str(f), "-n", "16", "-b", "1GB", "--json"],
                                         ["estimate", "--set", f"hardware={json.dumps(str(f))}", "--json"]]))
        run_case("hardware profiles", cmd, d)


# ----------------------------------------------------------------------------- --set

SET_TEXT = st.one_of(
    NUMBERS.map(lambda v: toml_value(v)),
    st.sampled_from(["1e30", "-1", "0", "inf", "-inf", "nan", "+inf", "1_000", "0x10", "1e6", "9" * 5000, "[" * 500,
                     "[" * 20 + "]" * 20, "{a = 1}", "[1, 2]", '"x"', '"' + "y" * 100_000 + '"', "true", "",
                     "unquoted text", "1\nname = 2", "'lit'", "2024-01-01", "1.5", "999999999999999999999"]),
    TEXTS.map(json.dumps),
    st.text(max_size=20),
)


@given(data=st.data())
@examples(140)
def test_generated_set_overrides_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    scenario = data.draw(st.sampled_from([p.stem for p in SCENARIOS]))
    sets = []
    for _ in range(data.draw(st.integers(1, 3))):
        field = data.draw(st.one_of(st.sampled_from(SCENARIO_FIELDS), st.sampled_from(["", ".", "a..b", "layout",
                                    "x" * 300, ".".join(["a"] * 40), "workload.kind", "routing"])))
        sets.append(f"{field}={data.draw(SET_TEXT)}")
    cmd = data.draw(st.sampled_from([["estimate", scenario, "--json"], ["estimate", scenario],
                                     ["compare", scenario, scenario, "--json"]]))
    for s in sets:
        cmd += ["--set", s]
    with workdir() as d:
        run_case("--set overrides", cmd, d)


# ----------------------------------------------------------------------------- flags

FLAG_TEXT = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "3", "8", "64", "256", "4096", "16384", "1e6", "1e9", "1e12", "1e30", "1e400",
                     "9" * 5000, "inf", "-inf", "nan", "1.5", "0.0", "-0.5", "abc", "", " ", "1_000", "0x10", "1e-300",
                     "2.0", "99999999999999999999"]),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
SIZE_TEXT = st.one_of(FLAG_TEXT, st.sampled_from(["1GB", "64MiB", "1e400B", "1e30GB", "-1GB", "0B", "1PB", "1EB",
                                                  "1 Gb/s", "GB", "1e3", "12KiB", "1.5TB", "x" * 300]))
DIST_TEXT = st.sampled_from(["uniform", "zipf:1.2", "zipf:1e308", "zipf:-1", "zipf:nan", "zipf:inf", "zipf:1:-5",
                             "dirichlet:0", "dirichlet:1e-300", "dirichlet:1e300", "dirichlet:0.5:7", "hist:",
                             "hist:1,2,3", "hist:0,0", "hist:-1,1", "hist:nan,1", "hist:1e308,1e308",
                             "hist:" + ",".join(["1"] * 300), "hist:/nope.json", "hist:/dev/zero.json", "bogus", "",
                             "zipf:1.2@3", "uniform;zipf:1.2@0"])


def _flags(data: st.DataObject, spec: dict[str, st.SearchStrategy[str]], n: tuple[int, int]) -> list[str]:
    out: list[str] = []
    names = data.draw(st.lists(st.sampled_from(sorted(spec)), min_size=n[0], max_size=n[1], unique=True))
    for name in names:
        out += [name, data.draw(spec[name])]
    return out


LOAD_FLAGS = {
    "--experts": FLAG_TEXT, "--top-k": FLAG_TEXT, "--ep": FLAG_TEXT, "--tokens": FLAG_TEXT,
    "--capacity-factor": FLAG_TEXT, "--redundant-experts": FLAG_TEXT, "--samples": FLAG_TEXT, "--seed": FLAG_TEXT,
    "--groups": FLAG_TEXT, "--topk-groups": FLAG_TEXT, "--mean-experts": FLAG_TEXT, "--distribution": DIST_TEXT,
    "--router": st.sampled_from(["top_k", "switch", "group_limited", "threshold", "expert_choice", "bogus"]),
    "--placement": st.sampled_from(["contiguous", "round_robin", "load_aware", "bogus"]),
    "--model": st.sampled_from(["deepseek-v3", "mixtral-8x7b", "tiny-moe", "nope", "x" * 5000, "/nonexistent.json",
                                "/", "/dev/null", str(REPO / "README.md")]),
}


@given(data=st.data())
@examples(90)
def test_generated_load_flags_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([["load", "--experts", "64", "--top-k", "4"], ["load", "--model", "deepseek-v3"],
                                      ["load", "mixtral-8x7b-serve-h100"], ["load"]]))
    cmd = base + _flags(data, LOAD_FLAGS, (1, 4)) + data.draw(st.sampled_from([["--json"], []]))
    with workdir() as d:
        if data.draw(st.integers(0, 5)) == 0:  # a histogram file of hostile counts
            hist = d / data.draw(st.sampled_from(["h.json", "h.csv"]))
            if data.draw(st.booleans()):
                hist.write_bytes(data.draw(BROKEN_BODIES))
            else:
                counts = data.draw(st.lists(st.one_of(NUMBERS, st.lists(NUMBERS, max_size=4)), max_size=70))
                hist.write_text(json.dumps(counts) if hist.suffix == ".json" else
                                "\n".join(",".join(map(str, c)) if isinstance(c, list) else str(c) for c in counts))
            cmd += ["--distribution", f"hist:{hist}" + data.draw(st.sampled_from(["", "@0", "@5", "@-1", "@x"]))]
        run_case("load flags", cmd, d)


COMM_COMMON = {"--hardware": st.sampled_from(["h100-sxm", "h800", "gb200-nvl72", "local-cpu", "nope", "", "x" * 5000,
                                              "/nonexistent.toml", str(REPO / "README.md"), "/dev/null"]),
               "--ranks": FLAG_TEXT, "--ranks-per-node": FLAG_TEXT}
COMM_A2A = {**COMM_COMMON, "--tokens-per-rank": FLAG_TEXT, "--top-k": FLAG_TEXT, "--experts": FLAG_TEXT,
            "--hidden": FLAG_TEXT, "--bytes-per-token": SIZE_TEXT, "--combine-bytes-per-token": SIZE_TEXT,
            "--node-limit": FLAG_TEXT, "--dispatch-dtype": st.sampled_from(["bf16", "fp8", "fp32", "fp7", ""]),
            "--algorithm": st.sampled_from(["direct", "hierarchical", "ring", "bogus"]), "--distribution": DIST_TEXT}
COMM_COLL = {**COMM_COMMON, "--bytes": SIZE_TEXT, "--sweep": st.one_of(st.sampled_from(
    ["1KB:1GB", "1B:1EB", "1GB:1KB", "0:1GB", "1KB", ":", "1e400B:1e401B", "1KB:1e30B"]), st.text(max_size=10)),
    "--algorithm": st.sampled_from(["auto", "ring", "tree", "nvls", "direct", "bogus"])}


@given(data=st.data())
@examples(90)
def test_generated_comm_flags_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    sub = data.draw(st.sampled_from(["all-to-all", "all-to-all", "all-reduce", "all-gather", "reduce-scatter",
                                     "sendrecv", "topology"]))
    if sub == "all-to-all":
        cmd = ["comm", sub, "-H", "h800", "-n", "64", "-t", "4096", "-k", "8", "-e", "256", "--hidden", "7168"]
        spec = COMM_A2A
    elif sub == "topology":
        cmd, spec = ["comm", sub, "-H", "h100-sxm", "-n", "16"], COMM_COMMON
    else:
        cmd, spec = ["comm", sub, "-H", "h100-sxm", "-n", "16", "-b", "1GB"], COMM_COLL
    cmd += _flags(data, spec, (1, 3)) + data.draw(st.sampled_from([["--json"], []]))
    with workdir() as d:
        run_case("comm flags", cmd, d)


PLAN_FLAGS = {"--top": FLAG_TEXT, "--max-gpus": st.sampled_from(["0", "-1", "1e30", "inf", "nan", "abc", "8", "16"]),
              "--max-ttft-s": FLAG_TEXT, "--max-tpot-s": FLAG_TEXT, "--min-tokens-per-s": FLAG_TEXT,
              "--max-usd-per-hour": FLAG_TEXT, "--objective": st.sampled_from(["cost", "throughput", "latency", "x"]),
              "--set": SET_TEXT.map(lambda v: f"workload.batch_size={v}")}


@given(data=st.data())
@examples(30)
def test_generated_plan_flags_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    scenario = data.draw(st.sampled_from(["mixtral-8x7b-serve-h100", "deepseek-v3-decode-h800"]))
    with workdir() as d:
        cmd = ["plan", scenario, "--hardware", data.draw(st.sampled_from(["h100-sxm", "h800", "nope", ","])),
               "--max-gpus", "8", "--csv", str(d / "out.csv")]
        cmd += _flags(data, PLAN_FLAGS, (1, 3)) + ["--json"]
        code, _ = run_case("plan flags", cmd, d)
        if code == 0:
            assert (d / "out.csv").read_text().count("\n") >= 2


@given(data=st.data())
@examples(50)
def test_generated_sweep_grids_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    scenario = data.draw(st.sampled_from(["mixtral-8x7b-serve-h100", "deepseek-v3-decode-h800", "deepseek-v3-train-h800"]))
    with workdir() as d:
        cmd = ["sweep", scenario, "--csv", str(d / "out.csv")]
        for _ in range(data.draw(st.integers(1, 2))):
            field = data.draw(st.one_of(st.sampled_from(SCENARIO_FIELDS), st.sampled_from(["", "x..y", "layout"])))
            values = data.draw(st.lists(SET_TEXT.filter(lambda t: "," not in t and len(t) < 300), min_size=1,
                                        max_size=3))
            cmd += ["--vary", f"{field}={','.join(values)}"]
        if data.draw(st.booleans()):
            cmd += ["--set", f"{data.draw(st.sampled_from(SCENARIO_FIELDS))}={data.draw(SET_TEXT)}"]
        if data.draw(st.integers(0, 4)) == 0:
            cmd += ["--jsonl", data.draw(st.sampled_from([str(d / "out.jsonl"), str(d), "/proc/nope/x.jsonl",
                                                          str(d / "out.csv")]))]
        cmd += ["--json"]
        code, _ = run_case("sweep grids", cmd, d)
        if code == 0:
            assert (d / "out.csv").read_text().startswith(cmd[cmd.index("--vary") + 1].split("=")[0])


@given(data=st.data())
@examples(40)
def test_generated_compare_overrides_fail_cleanly_or_give_sane_answers(data: st.DataObject) -> None:
    a = data.draw(st.sampled_from([p.stem for p in SCENARIOS] + ["nope", "", "x.toml"]))
    b = data.draw(st.sampled_from([p.stem for p in SCENARIOS]))
    cmd = ["compare", a, b]
    for flag in data.draw(st.lists(st.sampled_from(["--set", "--set-a", "--set-b"]), min_size=1, max_size=3)):
        cmd += [flag, f"{data.draw(st.sampled_from(SCENARIO_FIELDS))}={data.draw(SET_TEXT)}"]
    cmd += data.draw(st.sampled_from([["--json"], []]))
    with workdir() as d:
        run_case("compare overrides", cmd, d)


def test_the_suite_generated_enough_cases() -> None:
    """Runs last in this module: at least 500 generated cases went through run_case (when run in full)."""
    total = sum(CASES.values())
    print(f"\ngenerated bad-input cases: {total} {CASES}")
    if len(CASES) < 10:
        pytest.skip("only part of the module ran")
    assert total >= 500 * SCALE, CASES


# ----------------------------------------------------------------------------- real processes

SUBPROCESS_CASES = [
    (["estimate", "--set", "workload.batch_size=1000000000000000000000000000000"], "workload.batch_size"),
    (["estimate", "--set", "routing.capacity_factor=inf"], "routing.capacity_factor"),
    (["estimate", "--set", "routing.seed=-1"], "routing.seed"),
    (["estimate", "--set", "workspace_bytes=inf"], "workspace_bytes"),
    (["estimate", "--set", "workload.output_tokens=1000000000000000000000000000000"], "workload.output_tokens"),
    (["estimate", "--set", "price_usd_per_gpu_hour=inf"], "price_usd_per_gpu_hour"),
    (["estimate", "--set", "routing.node_limit=1000000000000000000000000000000"], "routing.node_limit"),
    (["estimate", "--set", "workload.prompt_tokens=40000"], "32,768"),
    (["load", "--model", "mixtral-8x7b", "--tokens", "1e30"], "--tokens"),
    (["load", "--model", "mixtral-8x7b", "--tokens", "1000000000000000000000000000000"], "--tokens"),
    (["plan", "--top", "0"], "--top"),
    (["plan", "--top", "-1"], "--top"),
    (["models", "show", "m" * 100_000], "model"),
]


@pytest.mark.parametrize("args,needle", SUBPROCESS_CASES, ids=[" ".join(a)[:60] for a, _ in SUBPROCESS_CASES])
def test_issue_examples_as_real_processes_exit_2_with_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "moesim.cli.main", *args], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert needle in lines[0] and r.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("body", [b"\xff\xfe" + 'name = "x"'.encode("utf-16-le"), b"\x00\x9f\x92\x96binary",
                                  b"a = " + b"[" * 10000 + b"]" * 10000],
                         ids=["utf-16", "binary", "deep"])
def test_undecodable_or_deep_files_as_real_processes(body: bytes, tmp_path: Path) -> None:
    for name, cmd in (("s.toml", ["estimate"]), ("config.json", ["models", "show"])):
        f = tmp_path / name
        f.write_bytes(body)
        r = subprocess.run([sys.executable, "-m", "moesim.cli.main", *cmd, str(f)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
        assert str(f) in r.stderr and ("not UTF-8 text" in r.stderr or "nested more than" in r.stderr)
