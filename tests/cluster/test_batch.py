"""Offline batches: JSONL parsing, and a batch through the running cluster."""

from __future__ import annotations

import json

import pytest

from cluster.batch.runner import BatchFileError, parse_request, read_requests, submit_batch, write_results
from engine.sampling_params import SamplingParams
from tests.engine.conftest import make_engine


def test_jsonl_rows_and_their_errors(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "prompt": "Hello", "max_tokens": 3}\n\n{"prompt_token_ids": [0, 5], "seed": 2}\n')
    a, b = read_requests(path, {"temperature": 0.0})
    assert (a.id, a.prompt, a.params.max_tokens, a.params.temperature) == ("a", "Hello", 3, 0.0)
    assert (b.id, b.prompt_token_ids, b.params.seed) == ("3", (0, 5), 2)
    for line, message in [("{oops", "line 7: not JSON"), ('{"id": 1}', "line 7: give exactly one of"),
                          ('{"prompt": "x", "colour": 1}', "line 7: unknown field 'colour'"),
                          ('{"prompt": "x", "max_tokens": 0}', "line 7: max_tokens must be a positive"),
                          ('{"prompt": null}', "line 7: 'prompt' must be a string, got null"),
                          ('{"prompt": ["a"]}', "line 7: 'prompt' must be a string"),
                          ('{"prompt_token_ids": "12"}', "line 7: 'prompt_token_ids' must be a list of integers"),
                          ('{"prompt_token_ids": [1, true]}', "line 7: 'prompt_token_ids' must be a list of int")]:
        with pytest.raises(BatchFileError, match=message):
            parse_request(line, 7, {})


@pytest.mark.ray
@pytest.mark.redis
def test_batch_through_the_cluster_matches_the_engine(cluster, tiny_model, tmp_path):
    params = SamplingParams(max_tokens=6, temperature=0)
    lines = [{"id": f"r{i}", "prompt_token_ids": [0, 11 + i, 40, 7 * i + 3], "max_tokens": 6, "temperature": 0}
             for i in range(20)] + [{"id": "text", "prompt": "Hello, world!", "max_tokens": 6, "temperature": 0},
                                    {"id": "bad", "prompt_token_ids": [10**8], "max_tokens": 6}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    results = submit_batch(read_requests(src), cluster="default", progress=False)
    engine = make_engine(tiny_model)
    expected = engine.generate([line.get("prompt_token_ids") or line.get("prompt") for line in lines[:-1]], params)
    assert [r.id for r in results] == [line["id"] for line in lines]
    for r, e in zip(results, expected):
        assert (r.token_ids, r.text, r.error) == (e.token_ids, e.text, None)
    assert "outside the vocabulary" in results[-1].error
    write_results(tmp_path / "out.jsonl", results)
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["id"] == "r0"
