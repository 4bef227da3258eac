"""A private redis-server on a free loopback port, for local clusters and tests, supervised.

The server gets a random password, written with the rest of its settings to a config file
only its owner can read (never on a command line, where ``ps`` shows it); ``url`` carries it
to clients. A supervisor thread restarts the server on the same port and password when it
dies, with a growing pause between attempts, and logs one line per change of state. The
restarted server is empty (no persistence): clients reconnect and carry on without the
prefix events and host-tier blocks the old one held.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from kvstore.redis_client import redact_url

log = logging.getLogger(__name__)

PASSWORD_ENV = "REDIS_PASSWORD"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_password(url: str, password: str | None = None) -> str:
    """An external Redis URL with its password: the URL's own, else ``password``, else
    ``$REDIS_PASSWORD``, else none."""
    password = password or os.environ.get(PASSWORD_ENV)
    parts = urlsplit(url)
    if parts.password is not None or not password or parts.scheme not in ("redis", "rediss"):
        return url
    user = quote(unquote(parts.username or ""), safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"))


class RedisServer:
    """``with RedisServer() as url: ...`` starts redis-server (no persistence, a password,
    supervised) and stops it."""

    def __init__(self, port: int | None = None, start_timeout_s: float = 10.0, supervise: bool = True,
                 max_backoff_s: float = 5.0):
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.supervise, self.max_backoff_s = supervise, max_backoff_s
        self.password = secrets.token_urlsafe(24)
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._dir = tempfile.TemporaryDirectory(prefix="tierserve-redis-")
        self.config_path = os.path.join(self._dir.name, "redis.conf")
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL clients use; it holds the password (print ``display_url``)."""
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def display_url(self) -> str:
        return redact_url(self.url)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: install it (apt-get install redis-server) "
                               "or set kvstore.redis_url to a running Redis")
        self._write_config()
        self._launch(binary)
        if self.supervise:
            self._supervisor = threading.Thread(target=self._watch, args=(binary,), name="redis-supervisor",
                                                daemon=True)
            self._supervisor.start()
        return self.url

    def _write_config(self) -> None:
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'port {self.port}\nbind 127.0.0.1\nprotected-mode yes\nsave ""\nappendonly no\n'
                    f'dir "{self._dir.name}"\nrequirepass "{self.password}"\n')

    def _launch(self, binary: str) -> None:
        """Start the server and wait until it accepts connections (RuntimeError if it does not)."""
        self.proc = subprocess.Popen([binary, self.config_path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self._terminate()
        raise RuntimeError(f"redis-server did not start on port {self.port} within {self.start_timeout_s} s")

    def _watch(self, binary: str) -> None:
        """Restart the server whenever it exits, until ``stop``; one log line per change."""
        backoff = 0.25
        while not self._stopping.wait(0.2):
            if self.proc is not None and self.proc.poll() is None:
                backoff = 0.25
                continue
            code = self.proc.returncode if self.proc is not None else None
            log.warning("redis-server on port %d exited (code %s); restarting it", self.port, code)
            while not self._stopping.is_set():
                try:
                    self._launch(binary)
                except (RuntimeError, OSError) as e:
                    log.warning("redis-server did not restart (%s); next try in %.1f s", e, backoff)
                    self._stopping.wait(backoff)
                    backoff = min(2 * backoff, self.max_backoff_s)
                    continue
                self.restarts += 1
                log.warning("redis-server on port %d is back (restart %d)", self.port, self.restarts)
                break

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=self.start_timeout_s + 5)
            self._supervisor = None
        self._terminate()
        self.proc = None
        self._dir.cleanup()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
