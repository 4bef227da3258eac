"""`tierserve submit --address http://HEAD:8265`: the batch runs as a Ray job beside the cluster.

    results = submit_job(requests, "http://head:8265", cluster="prod", model=None, options=JobOptions())

This side speaks only HTTP to the head's dashboard (Ray's Jobs API): no Ray Client session, so
the client needs no open GCS or Ray Client port and no matching Python. The job's runtime_env
carries

* ``py_modules``: our packages from the checkout this runs from (cluster, engine, router, ...),
  so the job runs the client's code whatever the head has installed;
* ``working_dir``: a directory holding the requests, pickled (the job runs our code anyway);
* ``env_vars``: PYTHONUNBUFFERED, and what ``--env KEY=VALUE`` gives.

The job (cluster/batch/job_driver.py) joins the cluster's Ray, runs the batch through a dispatcher of
its own (or, with ``model``, on an engine it loads), prints a progress line at most every half
second and, at the end, one line per result. This side polls the job's status and log: progress
lines drive the bar, result lines become the results, and a failed job's error line (else the
last lines of its log) is the error. Ctrl-C stops the job.

Token authentication (on by default in Ray 2.5x): the dashboard wants ``Authorization: Bearer
<token>``, sent whenever a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).
"""

from __future__ import annotations

import logging
import pickle
import shlex
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cluster.batch.files import AnyRequest, AnyResult, parse_result_line
from cluster.bringup.ray_auth import auth_token
from cluster.bringup.ray_connect import CONNECT_TIMEOUT_S, RayUnreachableError

PACKAGES = ("cluster", "engine", "router", "kvstore", "workers", "prefill_workers", "decode_workers",
            "attention_offload")
REQUESTS_FILE = "requests.pkl"
PROGRESS, RESULT, FAILURE = "@tierserve-progress ", "@tierserve-result ", "@tierserve-error "
POLL_S = 0.5
SUBMIT_RETRY_S = 60.0   # a head that just started refuses jobs until its agent is up
TAIL_LINES = 20
QUIET_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging")


class JobFailedError(RuntimeError):
    """The job was refused, failed or was stopped; the message says why in a few lines."""


@dataclass(frozen=True)
class JobOptions:
    submission_id: str | None = None          # default: tierserve-batch-<random>
    env: tuple[tuple[str, str], ...] = ()     # the job's extra environment variables
    num_gpus: float = 0                       # for the job's driver (a batch on its own engine)
    verbose: bool = False                     # the job's own log lines on stderr, Ray's SDK lines


def submit_job(requests: list[AnyRequest], address: str, cluster: str, model: str | None, options: JobOptions,
               progress: bool = True) -> list[AnyResult]:
    """Run the batch as a Ray job at ``address`` (a dashboard URL) on the named cluster, or on
    ``model`` loaded by the job; results in input order."""
    client = connect(address, options.verbose)
    sid = submit(client, requests, cluster, model, options)
    print(f"submitted Ray job {sid} to {address}", file=sys.stderr)
    try:
        lines = follow(client, sid, len(requests), progress, options.verbose)
    except KeyboardInterrupt:
        client.stop_job(sid)
        print(f"stopped Ray job {sid}", file=sys.stderr)
        raise
    if len(lines) != len(requests):
        raise JobFailedError(f"Ray job {sid} printed {len(lines)} results for {len(requests)} requests")
    return [parse_result_line(line) for line in lines]


def connect(address: str, verbose: bool = False):
    """A JobSubmissionClient for the dashboard at ``address``, with the token when there is one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient
    check_dashboard(address)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    token = auth_token()
    try:
        return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"} if token else {})
    except AuthenticationError:
        why = "our token was refused" if token else "no token was found here"
        raise RayUnreachableError(f"the Ray dashboard at {address} wants a token ({why}): set RAY_AUTH_TOKEN, "
                                  "or copy the head's ~/.ray/auth_token to this machine") from None


def check_dashboard(address: str) -> None:
    """A TCP connect to the dashboard within seconds, else a one-line error."""
    url = urlsplit(address)
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        port = None
    if not url.hostname or port is None:
        raise RayUnreachableError(f"Ray dashboard address {address!r} is not http://HOST:PORT")
    try:
        with socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT_S):
            return
    except socket.gaierror:
        why = f"host {url.hostname!r} is not known"
    except TimeoutError:
        why = f"no answer within {CONNECT_TIMEOUT_S:g} s"
    except OSError as e:
        why = e.strerror or str(e)
    raise RayUnreachableError(f"cannot reach the Ray dashboard at {address}: {why} (it listens on the head's "
                              "port 8265 unless `ray start --dashboard-port` moved it)")


def submit(client, requests: list[AnyRequest], cluster: str, model: str | None, options: JobOptions) -> str:
    """Stage the requests, submit the job (retrying while a new head cannot take jobs yet); its id."""
    target = ["--model", model] if model is not None else ["--cluster", cluster]
    with tempfile.TemporaryDirectory(prefix="tierserve-batch-") as work:
        Path(work, REQUESTS_FILE).write_bytes(pickle.dumps(requests))
        entrypoint = shlex.join(["python", "-m", "cluster.batch.job_driver", "--requests", REQUESTS_FILE, *target])
        job = dict(entrypoint=entrypoint,
                   submission_id=options.submission_id or f"tierserve-batch-{uuid.uuid4().hex[:12]}",
                   runtime_env=runtime_env(work, options.env),
                   metadata={"tierserve": "batch", "target": model or cluster, "requests": str(len(requests))},
                   entrypoint_num_gpus=options.num_gpus or None)
        deadline = time.monotonic() + SUBMIT_RETRY_S
        while True:
            try:
                return client.submit_job(**job)
            except RuntimeError as e:
                if "No available agent" in str(e) and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise JobFailedError(f"Ray refused the job: {str(e).strip().splitlines()[0]}") from None


def runtime_env(working_dir: str, env: tuple[tuple[str, str], ...]) -> dict:
    root = Path(__file__).resolve().parents[2]  # the checkout (cluster/batch/ is two levels down)
    modules = [str(root / p) for p in PACKAGES if (root / p / "__init__.py").is_file()]
    return {"working_dir": working_dir, "py_modules": modules, "excludes": ["__pycache__", "*.pyc"],
            "env_vars": {"PYTHONUNBUFFERED": "1", **dict(env)}}


def follow(client, sid: str, total: int, progress: bool, verbose: bool) -> list[str]:
    """Poll the job to its end, showing its progress; its result lines. JobFailedError unless it succeeded."""
    from ray.job_submission import JobStatus
    from tqdm import tqdm
    log = JobLog(verbose)
    with tqdm(total=total, disable=not progress, desc=f"Ray job {sid}", unit="req") as bar:
        while True:
            status = client.get_job_status(sid)  # before the log: a finished job's log is complete
            log.read(client.get_job_logs(sid))
            if log.done > bar.n:
                bar.update(log.done - bar.n)
            if status.is_terminal():
                break
            time.sleep(POLL_S)
    if status is JobStatus.SUCCEEDED and log.failure is None:
        return log.results
    why = log.failure or f"{client.get_job_info(sid).message or status.value}; its log ends:\n" + "\n".join(log.tail)
    raise JobFailedError(f"Ray job {sid} {status.value.lower()}: {why}")


class JobLog:
    """What a batch job printed, read incrementally from its whole log as polls return it."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.seen = 0
        self.partial = ""
        self.done = 0
        self.results: list[str] = []
        self.failure: str | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def read(self, text: str) -> None:
        new, self.seen = text[self.seen:], len(text)
        *lines, self.partial = (self.partial + new).split("\n")
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        if line.startswith(RESULT):
            self.results.append(line.removeprefix(RESULT))
        elif line.startswith(PROGRESS):
            self.done = int(line.removeprefix(PROGRESS).split()[0])
        elif line.startswith(FAILURE):
            self.failure = line.removeprefix(FAILURE)
        else:
            self.tail.append(line)
            if self.verbose:
                print(line, file=sys.stderr)
