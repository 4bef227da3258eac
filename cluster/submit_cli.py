"""`tierserve submit`: an offline JSONL batch through a running cluster.

    tierserve submit --cluster local prompts.jsonl -o out.jsonl                   # started on this machine
    tierserve submit --address ray://head:10001 --cluster prod prompts.jsonl -o out.jsonl   # a remote head
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run a JSONL batch of prompts through a running cluster")
    p.add_argument("prompts", type=Path, help='JSONL: {"prompt": ...} or {"prompt_token_ids": [...]} per line')
    p.add_argument("-o", "--output", type=Path, required=True, help="JSONL results, in input order")
    p.add_argument("--address", default="local",
                   help="local (default: the cluster `tierserve serve --config` started on this machine), "
                        "ray://HOST:10001 (a remote head's Ray Client), HOST:PORT (a GCS), or auto (any Ray here)")
    p.add_argument("--cluster", default="default", help="the cluster's name (its config's `name`, default 'default')")
    p.add_argument("--max-tokens", type=int, default=None, help="default for lines that do not set it")
    p.add_argument("--temperature", type=float, default=None, help="default for lines that do not set it")
    p.set_defaults(func=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    from cluster.batch import BatchFileError, read_requests, submit_batch, write_results
    from cluster.registry import ClusterNotFoundError
    defaults = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature))
                if v is not None}
    try:
        requests = read_requests(args.prompts, defaults)
        results = submit_batch(requests, args.cluster, args.address)
    except (BatchFileError, ClusterNotFoundError, OSError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_results(args.output, results)
    failed = sum(r.error is not None for r in results)
    print(f"{len(results) - failed} of {len(results)} requests done; results in {args.output}")
    return 0 if failed == 0 else 1
