"""`tierserve submit`: an offline JSONL batch through a running cluster (or an engine of its own).

    tierserve submit --cluster local prompts.jsonl -o out.jsonl                          # started on this machine
    tierserve submit --address http://head:8265 --cluster prod batch.jsonl -o out.jsonl  # a Ray job (Jobs API)
    tierserve submit --address ray://head:10001 --cluster prod batch.jsonl -o out.jsonl  # through Ray Client
    tierserve submit --model /models/tiny batch.jsonl -o out.jsonl                       # an engine in this process

The input is our prompts format or the OpenAI Batch format (detected per file, cluster/batch/files.py);
the output follows the input's format.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run a JSONL batch through a running cluster (or an engine of its own)")
    p.add_argument("prompts", type=Path, help='JSONL: {"prompt": ...} or {"prompt_token_ids": [...]} per line, or the '
                                              'OpenAI Batch format ({"custom_id", "method", "url", "body"})')
    p.add_argument("-o", "--output", type=Path, required=True, help="JSONL results, in input order")
    p.add_argument("--address", default="local",
                   help="local (default: the cluster `tierserve serve --config` started on this machine), "
                        "http://HEAD:8265 (a head's dashboard: the batch runs as a Ray job), ray://HEAD:10001 "
                        "(a head's Ray Client), HOST:PORT (a GCS), or auto (any Ray here)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--cluster", default="default", help="the cluster's name (its config's `name`, default "
                                                            "'default')")
    target.add_argument("--model", help="run on an engine of its own loaded from this checkpoint instead of a "
                                        "cluster: in this process, or in the Ray job with an http:// address")
    p.add_argument("--max-tokens", type=int, default=None, help="default for lines that do not set it")
    p.add_argument("--temperature", type=float, default=None, help="default for lines that do not set it")
    job = p.add_argument_group("Ray job options (an http:// address)")
    job.add_argument("--submission-id", default=None, help="the job's id (default tierserve-batch-<random>)")
    job.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="an environment variable for the job (repeatable)")
    job.add_argument("--num-gpus", type=float, default=0, help="GPUs for the job's driver (with --model)")
    job.add_argument("--verbose", action="store_true", help="show the job's own log lines and Ray's")
    p.set_defaults(func=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    from cluster.batch.files import BatchFileError, read_requests, write_results
    from cluster.batch.job_submit import JobFailedError, JobOptions
    from cluster.batch.runner import submit_batch
    from cluster.bringup.registry import ClusterNotFoundError
    defaults = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature))
                if v is not None}
    try:
        job = JobOptions(args.submission_id, parse_env(args.env), args.num_gpus, args.verbose)
        requests = read_requests(args.prompts, defaults)
        results = submit_batch(requests, args.cluster, args.address, model=args.model, job=job)
    except (BatchFileError, ClusterNotFoundError, JobFailedError, OSError, ConnectionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_results(args.output, results)
    failed = sum(r.error is not None for r in results)
    print(f"{len(results) - failed} of {len(results)} requests done; results in {args.output}")
    return 0 if failed == 0 else 1


def parse_env(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    env = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env {pair!r} is not KEY=VALUE")
        env.append((key, value))
    return tuple(env)
