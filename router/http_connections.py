"""Connection deadlines uvicorn does not have: slow and idle clients are cut off.

uvicorn's keep-alive timeout only starts after a first response, and nothing limits how
long a client may take to send a request: a client that trickles its headers or body one
byte at a time (slowloris) holds a connection, and a request task, forever. Here:

- a new connection that sends nothing is closed after the idle timeout, as an idle
  keep-alive connection is;
- a request's headers and body must arrive within ``read_timeout_s`` of its first byte:
  slow headers get a 408 and the connection is closed; a slow body has its connection
  closed, which the app sees as a disconnect (the request is aborted).
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
               b"connection: close\r\ncontent-length: 37\r\n\r\nrequest not received within the limit")
RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with an idle deadline from the start and a per-request read deadline."""

    read_timeout_s: float = 30.0

    @classmethod
    def with_read_timeout(cls, read_timeout_s: float) -> type[DeadlineH11Protocol]:
        return type(cls.__name__, (cls,), {"read_timeout_s": read_timeout_s})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._read_deadline: asyncio.TimerHandle | None = None
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and self.conn.their_state not in RECEIVED:
            self._read_deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self._read_deadline is not None and self.conn.their_state in RECEIVED:
            self._read_deadline.cancel()
            self._read_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None
        super().connection_lost(exc)

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing() or self.conn.their_state in RECEIVED:
            return
        log.info("HTTP client %s: request not received within %g s; closing", self.client, self.read_timeout_s)
        if self.conn.their_state is h11.IDLE:  # still in the headers: nothing was started for it
            self.transport.write(TIMEOUT_408)
        self.transport.close()
