"""Connection limits for the web server, against clients that open connections and never finish a request
(slowloris: a thousand connections trickling a byte each used up every file descriptor, and real requests
timed out).

uvicorn closes idle keep-alive connections, but gives a request's headers unlimited time, and its
`limit_concurrency` counts open connections too, so slow ones would turn every real request into a 503.
`guarded_protocol` extends its h11 protocol with a deadline for each request's headers and a cap on open
connections: past the cap, the oldest connection that has shown itself slow is closed.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0  # seconds from connecting (or from the last response) to a complete request head
MAX_CONNECTIONS = 1000
BACKLOG = 128  # connections the kernel queues, and so the most one accept round can add at once
RESERVED_FDS = 64  # descriptors the server needs besides its connections (model, logs, threads, ...)
UNREAD_GRACE = 1.0  # seconds a new connection may send nothing before it counts as slow (a client's head
# arrives with its first packet, right after the handshake that let it be accepted)


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
    longer than header_timeout is closed, and past max_connections open ones, the oldest *suspect* is
    closed. Connections busy with a request are never closed for the cap.

    A suspect is a connection that has sent part of a head, or sits idle between requests, or has sent
    nothing for UNREAD_GRACE seconds. A connection not read yet is not one: a burst of accepts (up to
    BACKLOG) is handed to the protocol before any of them is read, and closing the oldest waiting
    connection then closed real clients whose complete request was already in the socket. The burst fits
    in the BACKLOG descriptors connection_cap keeps free, and is sorted out as soon as it is read."""
    suspects: dict[H11Protocol, None] = {}  # oldest first
    unread: dict[H11Protocol, float] = {}  # connected, nothing received yet: when it connected
    retry: asyncio.TimerHandle | None = None  # a later shed, for when only unread connections are over the cap

    def shed(loop: asyncio.AbstractEventLoop, connections: set) -> None:
        """Close suspects, oldest first, until at most max_connections are open."""
        nonlocal retry
        if len(connections) <= max_connections:
            return  # the common case, on every packet: nothing to look at
        now = loop.time()
        for old in [c for c, since in unread.items() if now - since >= UNREAD_GRACE]:
            unread.pop(old)
            suspects[old] = None
        while len(connections) > max_connections and suspects:
            next(iter(suspects)).drop()
        if len(connections) > max_connections and unread and (retry is None or retry.when() <= now):
            retry = loop.call_later(UNREAD_GRACE, shed, loop, connections)

    class GuardedH11Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            unread[self] = self.loop.time()
            self.track()
            shed(self.loop, self.connections)

        def data_received(self, data: bytes) -> None:
            unread.pop(self, None)
            super().data_received(data)
            self.track()
            shed(self.loop, self.connections)

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
                if self not in unread:
                    suspects.setdefault(self, None)
            else:
                self.stop_waiting()

        def stop_waiting(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
            suspects.pop(self, None)
            unread.pop(self, None)

        def drop(self) -> None:
            self.stop_waiting()
            self.timeout_keep_alive_handler()  # uvicorn's own close of an idle connection

    return GuardedH11Protocol
