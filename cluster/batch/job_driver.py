"""The driver of a batch that `tierserve submit` sent as a Ray job (cluster/batch/job_submit.py).

    python -m cluster.batch.job_driver --requests requests.pkl (--cluster NAME | --model PATH)

It prints what the submitting side reads from the job's log: ``@tierserve-progress DONE TOTAL``
at most every half second, then ``@tierserve-result {...}`` per request in input order (the output
file's lines), or one ``@tierserve-error ...`` line and exit code 2 when the batch cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pickle
import sys
import time
from pathlib import Path

from cluster.batch.files import AnyRequest, AnyResult, result_line
from cluster.batch.job_submit import FAILURE, POLL_S, PROGRESS, RESULT
from cluster.batch.runner import find_cluster, on_cluster, run_on_engine
from cluster.bringup.registry import NAMESPACE, ClusterNotFoundError
from engine.model_config import CheckpointError


class Progress:
    """Counts finished requests; prints a progress line at most every POLL_S seconds."""

    def __init__(self, total: int):
        self.total, self.done, self.printed_at = total, 0, 0.0

    def tick(self) -> None:
        self.done += 1
        if time.monotonic() - self.printed_at >= POLL_S:
            self.print()

    def print(self) -> None:
        self.printed_at = time.monotonic()
        print(f"{PROGRESS}{self.done} {self.total}", flush=True)


def run(requests: list[AnyRequest], cluster: str, model: str | None, progress: Progress) -> list[AnyResult]:
    if model is not None:
        import torch
        return run_on_engine(model, requests, progress.tick, "cuda" if torch.cuda.is_available() else "cpu")
    import ray
    ray.init(namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
    find_cluster(cluster, "auto", advice="start one in this Ray with `tierserve serve --config ... --address "
                                         "HEAD:6379`, or pass --cluster NAME")
    return asyncio.run(on_cluster(cluster, requests, progress.tick))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.batch.job_driver", description=__doc__)
    parser.add_argument("--requests", type=Path, required=True)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--cluster")
    target.add_argument("--model")
    args = parser.parse_args(argv)
    requests = pickle.loads(args.requests.read_bytes())
    progress = Progress(len(requests))
    try:
        results = run(requests, args.cluster, args.model, progress)
    except (ClusterNotFoundError, CheckpointError, ConnectionError) as e:
        print(f"{FAILURE}{' '.join(str(e).split())}", flush=True)
        return 2
    progress.print()
    sys.stdout.write("".join(f"{RESULT}{json.dumps(result_line(r))}\n" for r in results))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
