"""Connection limits for the web server, against clients that open connections and never finish a request
(slowloris: a thousand connections trickling a byte each used up every file descriptor, and real requests
timed out).

uvicorn closes idle keep-alive connections, but gives a request's headers unlimited time, and its
`limit_concurrency` counts open connections too, so slow ones would turn every real request into a 503.
`guarded_protocol` extends its h11 protocol with a deadline for each request's headers and a cap on open
connections: a new connection past the cap closes the oldest one still waiting for its headers.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0  # seconds from connecting (or from the last response) to a complete request head
MAX_CONNECTIONS = 1000
BACKLOG = 128  # connections the kernel queues, and so the most one accept round can add at once
RESERVED_FDS = 64  # descriptors the server needs besides its connections (model, logs, threads, ...)


def connection_cap(max_connections: int = MAX_CONNECTIONS) -> int:
    """How many connections to keep open under this process's descriptor limit: room is left for one
    accept round (BACKLOG) and for the process itself, so accepting never fails for want of one."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return max_connections
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return max_connections
    return max(8, min(max_connections, limit - BACKLOG - RESERVED_FDS))


def guarded_protocol(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """An h11 protocol class for uvicorn's Config(http=...): a connection waiting for a request head
    longer than header_timeout is closed, and so is the oldest waiting one when a new connection would
    make more than max_connections. Connections busy with a request are never closed for the cap."""
    waiting: dict[H11Protocol, None] = {}  # connections without a complete request head, oldest first

    class GuardedH11Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.track()
            if len(self.connections) > max_connections and waiting:
                next(iter(waiting)).drop()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.track()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.track()  # the next request's head is due within header_timeout too

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self.stop_waiting()

        def track(self) -> None:
            """Start the head's deadline when the connection begins to wait for one; stop it once
            the head is complete. Data arriving meanwhile does not move it: trickling cannot help."""
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if self.deadline is None:
                    self.deadline = self.loop.call_later(header_timeout, self.drop)
                    waiting[self] = None
            else:
                self.stop_waiting()

        def stop_waiting(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
            waiting.pop(self, None)

        def drop(self) -> None:
            self.stop_waiting()
            self.timeout_keep_alive_handler()  # uvicorn's own close of an idle connection

    return GuardedH11Protocol
