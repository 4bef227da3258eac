"""Offline batches: a JSONL file in, a JSONL file out, a progress bar.

    results = submit_batch(read_requests("prompts.jsonl"), cluster="local")   # started on this machine
    results = submit_batch(requests, cluster="prod", address="http://head:8265")   # a Ray Jobs API job
    results = submit_batch(requests, cluster="prod", address="ray://head:10001")   # through Ray Client
    results = submit_batch(requests, model="/models/tiny")                       # an engine in this process

Where the batch runs, by address: ``http(s)://`` (a head's dashboard) submits a Ray job that runs
it beside the cluster (cluster/batch/job_submit.py); ``ray://``, ``auto``, ``HOST:PORT`` and ``local``
join that Ray and run it in a small actor inside the cluster (so Ray Client only carries the
request list, the results and progress polls). Either way it drives the cluster's pools
through its own dispatcher. With ``model`` it runs on a single-process engine instead (here, or
in the Ray job). Both file formats (cluster/batch/files.py) run everywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing
from typing import TYPE_CHECKING

import ray

# re-exported: the files' side (read_requests, write_results, ...)
from cluster.batch.files import (  # noqa: F401
    AnyRequest,
    AnyResult,
    BatchFileError,
    BatchRequest,
    BatchResult,
    parse_request,
    read_requests,
    write_results,
)
from cluster.bringup.ray_connect import connect_ray
from cluster.bringup.registry import NAMESPACE, ClusterNotFoundError, attach, lookup, registry_name
from engine.outputs import GenerationResult
from router.backend import GenerationBackend
from router.client_input import new_request_id
from router.errors import classify

if TYPE_CHECKING:
    from cluster.batch.job_submit import JobOptions

MAX_IN_FLIGHT = 256


async def run_batch(backend: GenerationBackend, requests: list[AnyRequest], on_done: Callable[[], None],
                    max_in_flight: int = MAX_IN_FLIGHT) -> list[AnyResult]:
    """Every request through ``backend`` (a cluster's dispatcher or a local engine), at most
    ``max_in_flight`` at once; results in input order; ``on_done`` after each."""
    limit = asyncio.Semaphore(max_in_flight)

    async def one(request: AnyRequest) -> AnyResult:
        async with limit:
            try:
                return await run_one(backend, request)
            finally:
                on_done()
    return list(await asyncio.gather(*(one(r) for r in requests)))


async def run_one(backend: GenerationBackend, request: AnyRequest) -> AnyResult:
    rid = new_request_id(request.id_prefix)
    try:
        ids, params = request.prepare(backend.tokenizer, backend.max_model_len)
        result = GenerationResult(rid, ids)
        async with aclosing(backend.generate(rid, ids, params, None)) as deltas:
            async for delta in deltas:
                result.add(delta)
        return request.succeeded(result, backend.tokenizer, backend.model_name)
    except Exception as e:  # noqa: BLE001 - each request's failure is its own result line
        return request.failed(classify(e, rid), rid)


async def on_cluster(cluster: str, requests: list[AnyRequest], on_done: Callable[[], None]) -> list[AnyResult]:
    """The batch on a dispatcher of this process over the named cluster's replicas (this process
    is in the cluster's Ray: the runner actor, or a Ray job's driver)."""
    from cluster.bringup.local_cluster import make_dispatcher
    info = lookup(cluster)
    dispatcher = make_dispatcher(info, attach(info))
    try:
        return await run_batch(dispatcher, requests, on_done)
    finally:
        await dispatcher.aclose()


def run_on_engine(model: str, requests: list[AnyRequest], on_done: Callable[[], None],
                  device: str = "cpu") -> list[AnyResult]:
    """The batch on a single-process engine loaded here (`vllm run-batch`'s shape)."""
    from engine.config import EngineConfig
    from router.local_backend import LocalEngineBackend
    backend = LocalEngineBackend.from_config(EngineConfig(model=model, device=device))
    try:
        return asyncio.run(run_batch(backend, requests, on_done))
    finally:
        backend.shutdown()


@ray.remote(num_cpus=0)
class BatchRunner:
    """Runs one batch inside the cluster (for a caller joined through Ray Client or by GCS address)."""

    def __init__(self, cluster: str):
        self.cluster = cluster
        self.done = 0

    async def run(self, requests: list[AnyRequest]) -> list[AnyResult]:
        return await on_cluster(self.cluster, requests, self._count)

    def progress(self) -> int:
        return self.done

    def _count(self) -> None:
        self.done += 1


def submit_batch(requests: list[AnyRequest], cluster: str = "default", address: str | None = None,
                 progress: bool = True, model: str | None = None, job: JobOptions | None = None
                 ) -> list[AnyResult]:
    """Run ``requests`` through the named cluster (or, with ``model``, an engine of its own) and
    show a progress bar. ``address``: None or "local" is the cluster of that name that `tierserve
    serve --config` started on this machine (with ``model``: this process); "http://HEAD:8265"
    a Ray job (``job``: its options); "auto", "HOST:PORT", "ray://HOST:10001" as
    cluster/bringup/ray_connect.py says."""
    address = address or "local"
    if address.startswith(("http://", "https://")):
        from cluster.batch.job_submit import JobOptions, submit_job
        return submit_job(requests, address, cluster, model, job or JobOptions(), progress)
    if model is not None:
        if address != "local":
            raise ValueError(f"a batch on its own engine (--model) runs here or as a Ray job (an http:// "
                             f"address), not through {address}")
        return with_bar(len(requests), progress, f"batch on {model}",
                        lambda tick: run_on_engine(model, requests, tick))
    return _through_ray(requests, cluster, address, progress)


def with_bar(total: int, progress: bool, desc: str, work: Callable[[Callable[[], None]], list[AnyResult]]
             ) -> list[AnyResult]:
    from tqdm import tqdm
    with tqdm(total=total, disable=not progress, desc=desc, unit="req") as bar:
        return work(lambda: bar.update(1))


def _through_ray(requests: list[AnyRequest], cluster: str, address: str, progress: bool) -> list[AnyResult]:
    from tqdm import tqdm
    if not ray.is_initialized():
        connect_ray(address, cluster)
    find_cluster(cluster, address)
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


def find_cluster(cluster: str, address: str, advice: str | None = None) -> None:
    """ClusterNotFoundError (here, not inside the runner) saying which tierserve clusters this Ray
    holds, if any: `--address auto` may have found a Ray that is not ours."""
    try:
        lookup(cluster)
        return
    except ClusterNotFoundError:
        pass
    if not address.startswith(("ray://", "http://", "https://")):
        address = ray.get_runtime_context().gcs_address
    suffix = registry_name("")
    names = sorted(a["name"].removesuffix(suffix) for a in ray.util.list_named_actors(all_namespaces=True)
                   if a.get("namespace") == NAMESPACE and a["name"].endswith(suffix))
    if names:
        raise ClusterNotFoundError(f"no tierserve cluster named {cluster!r} in the Ray at {address}; "
                                   f"it runs: {', '.join(names)} (pass --cluster NAME)")
    raise ClusterNotFoundError(f"the Ray at {address} runs no tierserve cluster; " + (advice or (
        "`--address auto` takes any Ray on this machine, perhaps someone else's; leave --address out to "
        "reach the cluster `tierserve serve --config` started here, or start one")))
