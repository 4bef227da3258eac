"""Offline batches through a running cluster: JSONL in, JSONL out, a progress bar.

    results = submit_batch(read_requests("prompts.jsonl"), cluster="local")   # started on this machine
    results = submit_batch(requests, cluster="prod", address="ray://head:10001")  # a remote head

The batch runs in a small actor inside the cluster (so Ray Client only carries the request
list, the results and progress polls); it drives the cluster's pools through its own
dispatcher. Each input line is {"prompt": "..."} or {"prompt_token_ids": [...]}, with an
optional "id" and sampling fields (max_tokens, temperature, top_p, top_k, seed, stop, ...).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import ray

from cluster.ray_connect import connect_ray
from cluster.registry import NAMESPACE, ClusterNotFoundError, attach, lookup, registry_name
from engine.sampling_params import InvalidRequestError, SamplingParams

_SAMPLING_FIELDS = {f.name for f in fields(SamplingParams)}


@dataclass(frozen=True)
class BatchRequest:
    id: str
    params: SamplingParams
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class BatchResult:
    id: str
    token_ids: list[int]
    text: str
    finish_reason: str | None
    num_prompt_tokens: int = 0
    error: str | None = None


class BatchFileError(ValueError):
    """A malformed input line; the message gives the line number."""


def parse_request(line: str, number: int, defaults: dict) -> BatchRequest:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise BatchFileError(f"line {number}: not JSON ({e})") from None
    if not isinstance(row, dict) or ("prompt" in row) == ("prompt_token_ids" in row):
        raise BatchFileError(f"line {number}: give exactly one of 'prompt' or 'prompt_token_ids'")
    unknown = set(row) - _SAMPLING_FIELDS - {"id", "prompt", "prompt_token_ids"}
    if unknown:
        raise BatchFileError(f"line {number}: unknown field {sorted(unknown)[0]!r}")
    try:
        params = SamplingParams(**{**defaults, **{k: v for k, v in row.items() if k in _SAMPLING_FIELDS}})
    except (InvalidRequestError, TypeError) as e:
        raise BatchFileError(f"line {number}: {e}") from None
    ids = row.get("prompt_token_ids")
    return BatchRequest(str(row.get("id", number)), params, row.get("prompt"),
                        tuple(ids) if ids is not None else None)


def read_requests(path: str | Path, defaults: dict | None = None) -> list[BatchRequest]:
    lines = Path(path).read_text().splitlines()
    return [parse_request(line, i, defaults or {}) for i, line in enumerate(lines, 1) if line.strip()]


def write_results(path: str | Path, results: list[BatchResult]) -> None:
    Path(path).write_text("".join(json.dumps(asdict(r)) + "\n" for r in results))


@ray.remote(num_cpus=0)
class BatchRunner:
    """Runs one batch inside the cluster with bounded concurrency."""

    def __init__(self, cluster: str, max_in_flight: int = 256):
        from cluster.local_cluster import make_dispatcher
        info = lookup(cluster)
        self.dispatcher = make_dispatcher(info, attach(info))
        self.limit = asyncio.Semaphore(max_in_flight)
        self.done = 0

    async def run(self, requests: list[BatchRequest]) -> list[BatchResult]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    def progress(self) -> int:
        return self.done

    async def _one(self, req: BatchRequest) -> BatchResult:
        async with self.limit:
            try:
                ids = list(req.prompt_token_ids) if req.prompt_token_ids is not None else \
                    self.dispatcher.tokenizer.encode(req.prompt)
                tokens, text, reason = [], "", None
                async for delta in self.dispatcher.generate(None, ids, req.params):
                    tokens += delta.new_token_ids
                    text += delta.new_text
                    reason = delta.finish_reason
                return BatchResult(req.id, tokens, text, reason.value if reason else None, len(ids))
            except InvalidRequestError as e:
                return BatchResult(req.id, [], "", None, error=str(e))
            finally:
                self.done += 1


def submit_batch(requests: list[BatchRequest], cluster: str = "default", address: str | None = None,
                 progress: bool = True) -> list[BatchResult]:
    """Run ``requests`` through the named cluster and show a progress bar. Joins Ray at ``address``
    unless this process is in Ray already: None or "local" is the cluster of that name that
    `tierserve serve --config` started on this machine; "auto", "HOST:PORT", "ray://HOST:10001"
    as cluster/ray_connect.py says."""
    from tqdm import tqdm
    if not ray.is_initialized():
        connect_ray(address or "local", cluster)
    find_cluster(cluster, address or "local")
    runner = BatchRunner.remote(cluster)
    result = runner.run.remote(requests)
    with tqdm(total=len(requests), disable=not progress, desc=f"batch via {cluster!r}", unit="req") as bar:
        while not ray.wait([result], timeout=0.25)[0]:
            bar.update(ray.get(runner.progress.remote()) - bar.n)
        bar.update(len(requests) - bar.n)
    try:
        return ray.get(result)
    finally:
        ray.kill(runner)


def find_cluster(cluster: str, address: str) -> None:
    """ClusterNotFoundError (here, not inside the runner) saying which tierserve clusters this Ray
    holds, if any: `--address auto` may have found a Ray that is not ours."""
    try:
        lookup(cluster)
        return
    except ClusterNotFoundError:
        pass
    if not address.startswith("ray://"):
        address = ray.get_runtime_context().gcs_address
    suffix = registry_name("")
    names = sorted(a["name"].removesuffix(suffix) for a in ray.util.list_named_actors(all_namespaces=True)
                   if a.get("namespace") == NAMESPACE and a["name"].endswith(suffix))
    if names:
        raise ClusterNotFoundError(f"no tierserve cluster named {cluster!r} in the Ray at {address}; "
                                   f"it runs: {', '.join(names)} (pass --cluster NAME)")
    raise ClusterNotFoundError(f"the Ray at {address} runs no tierserve cluster (`--address auto` takes any Ray "
                               "on this machine, perhaps someone else's); leave --address out to reach the "
                               "cluster `tierserve serve --config` started here, or start one")
