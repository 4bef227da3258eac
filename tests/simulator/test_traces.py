"""Trace readers (Azure CSV, Mooncake JSONL, synthetic) and their errors with line numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simulator.errors import SimInputError
from simulator.traces.load import load_trace
from simulator.traces.synthetic import parse_synthetic, synthetic_trace

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,4808,10
2023-11-16 18:15:50.9951690,3180,8
2023-11-16 18:15:45.1000000,110,0
2023-11-16 18:16:03,7433,27
"""


def test_azure_csv_sorts_and_shifts_to_zero(tmp_path) -> None:
    path = tmp_path / "AzureLLMInferenceTrace_code.csv"
    path.write_text(AZURE)
    trace = load_trace(str(path))
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 1.58059, 5.895169, 17.9])
    assert trace.prompt_tokens.tolist() == [110, 4808, 3180, 7433]
    assert trace.output_tokens.tolist() == [1, 10, 8, 27]  # 0 generated tokens counts as the prefill's one
    assert trace.hash_ids is None


@pytest.mark.parametrize("row, message", [
    ("2023-11-16 18:15:46.1,abc,3", ":3: ContextTokens and GeneratedTokens must be integers"),
    ("yesterday,10,3", ":3: TIMESTAMP 'yesterday' is not a date and time"),
    ("2023-11-16 18:15:46.1,0,3", ":3: ContextTokens must be >= 1"),
    ("2023-11-16 18:15:46.1,10", ":3: expected 3 columns, got 2"),
])
def test_azure_malformed_rows_name_their_line(tmp_path, row: str, message: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:45.0,5,5\n{row}\n")
    with pytest.raises(SimInputError, match=message):
        load_trace(str(path))


def test_azure_header_must_name_the_columns(tmp_path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("time,prompt,output\n1,2,3\n")
    with pytest.raises(SimInputError, match=":1: header lacks TIMESTAMP, ContextTokens, GeneratedTokens"):
        load_trace(str(path))


def test_mooncake_jsonl_with_hash_ids(tmp_path) -> None:
    rows = [{"timestamp": 0, "input_length": 1100, "output_length": 7, "hash_ids": [1, 2, 3]},
            {"timestamp": 250, "input_length": 600, "output_length": 1, "hash_ids": [1, 9]}]
    path = tmp_path / "mooncake_trace.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    trace = load_trace(str(path))
    assert trace.arrival_s.tolist() == [0.0, 0.25]
    assert trace.hash_ids == ((1, 2, 3), (1, 9))
    assert trace.block_tokens == 512


@pytest.mark.parametrize("line, message", [
    ("{oops", ":2: not valid JSON"),
    ('{"timestamp": 1, "input_length": 5}', ":2: output_length must be a number"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 0}', ":2: input_length and output_length must be"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 2, "hash_ids": ["a"]}', ":2: hash_ids must be a list"),
    ('{"timestamp": 1, "input_length": 5, "output_length": 2, "hash_ids": [1, 2]}', ":2: 2 hash_ids for 5 tokens"),
    ("[1, 2]", ":2: expected a JSON object"),
])
def test_mooncake_malformed_lines_name_their_line(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2}\n' + line + "\n")
    with pytest.raises(SimInputError, match=message):
        load_trace(str(path))


def test_synthetic_is_seeded_and_hits_its_rate() -> None:
    a = load_trace("synthetic:n=20000,rate=50,workload=coding,seed=4")
    b = load_trace("synthetic:n=20000,rate=50,workload=coding,seed=4")
    c = load_trace("synthetic:n=20000,rate=50,workload=coding,seed=5")
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert a.rate == pytest.approx(50, rel=0.03)
    assert np.median(a.prompt_tokens) == pytest.approx(1500, rel=0.05)
    assert np.median(a.output_tokens) == pytest.approx(13, rel=0.1)


def test_synthetic_prefix_groups_share_leading_blocks() -> None:
    trace = synthetic_trace(parse_synthetic("synthetic:n=200,rate=5,prompt=fixed:100,output=fixed:4,"
                                            "prefix_groups=3,prefix_tokens=256,block=64"))
    assert set(trace.prompt_tokens.tolist()) == {356}
    firsts = {h[:4] for h in trace.hash_ids}
    assert len(firsts) == 3
    assert all(len(h) == 6 for h in trace.hash_ids)  # ceil(356 / 64)
    assert len({h[4] for h in trace.hash_ids}) == 200  # the rest is each request's own


def test_bursty_arrivals_and_scaling() -> None:
    trace = load_trace("synthetic:n=5000,rate=10,arrival=gamma:3,output=uniform:1:9")
    gaps = np.diff(trace.arrival_s)
    assert gaps.std() / gaps.mean() == pytest.approx(3, rel=0.15)
    fast = trace.scaled(2)
    assert np.allclose(fast.arrival_s, trace.arrival_s / 2) and fast.rate == pytest.approx(2 * trace.rate)
    assert np.array_equal(fast.prompt_tokens, trace.prompt_tokens)
    assert len(trace.head(10)) == 10


@pytest.mark.parametrize("spec, message", [
    ("synthetic:n=0", "n must be >= 1"),
    ("synthetic:rate=-1", "rate > 0"),
    ("synthetic:prompt=zipf:3", "is not fixed:V, uniform:LO:HI or lognormal"),
    ("synthetic:arrival=gamma:x", "is not poisson, constant or gamma:CV"),
    ("synthetic:workload=chat", "workload must be one of"),
    ("synthetic:colour=red", "unknown key 'colour'"),
    ("synthetic:n=ten", "synthetic trace"),
    ("synthetic:n", "is not key=value"),
])
def test_bad_synthetic_specs(spec: str, message: str) -> None:
    with pytest.raises(SimInputError, match=message):
        load_trace(spec)


def test_unknown_trace_kind() -> None:
    with pytest.raises(SimInputError, match="give a .csv"):
        load_trace("trace.parquet")
    with pytest.raises(SimInputError, match="does not exist"):
        load_trace("/nonexistent/trace.csv")
