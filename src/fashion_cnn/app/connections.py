"""Connection limits for the web server, against clients that open connections and never finish a request
(slowloris: a thousand connections trickling a byte each used up every file descriptor, and real requests
timed out).

uvicorn closes idle keep-alive connections, but gives a request's headers and body unlimited time, and
its `limit_concurrency` counts open connections too, so slow ones would turn every real request into a 503.
`guarded_protocol` extends its h11 protocol with a deadline for each request's headers, one for its body
that a minimum rate extends, and a cap on open connections: past the cap, the oldest connection that has
shown itself slow is closed. `ListeningServer` keeps a long kernel queue for bursts of new connections.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0  # seconds from connecting (or from the last response) to a complete request head
BODY_TIMEOUT = 10.0  # seconds from a request's head to the end of its body, extended by its rate:
MIN_BODY_RATE = 20_000  # bytes/s: each this many bytes received adds a second (Apache's RequestReadTimeout)
MAX_BODY_TIME = 300.0  # seconds: no body takes longer, however fast it began (64 MB needs 213 kB/s)
MAX_CONNECTIONS = 1000
BACKLOG = 2048  # connections the kernel queues for accepting, without a descriptor each (capped by Linux's
# net.core.somaxconn): 128 reset some of a burst of 1,000 clients
ACCEPT_BATCH = 32  # the most connections one accept round adds at once (asyncio's backlog argument)
IN_FLIGHT = 4 * ACCEPT_BATCH  # accepted before the cap sees them: rounds go on while each is handed over
RESERVED_FDS = 64  # descriptors the server needs besides its connections (model, logs, threads, ...)
READ_SOON = 0.1  # seconds: a connection accepted this recently is unread only because its turn has not come
UNREAD_GRACE = 1.0  # seconds a new connection may send nothing before it counts as slow (a client's head
# arrives with its first packet, right after the handshake that let it be accepted)


def connection_cap(max_connections: int = MAX_CONNECTIONS) -> int:
    """How many connections to keep open under this process's descriptor limit: room is left for the
    connections accepted and not yet counted (IN_FLIGHT) and for the process itself, so accepting never
    fails for want of a descriptor."""
    try:
        import resource  # POSIX only
    except ImportError:  # Windows: no such limit
        return max_connections
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return max_connections
    return max(8, min(max_connections, limit - IN_FLIGHT - RESERVED_FDS))


def guarded_protocol(header_timeout: float, max_connections: int, body_timeout: float = BODY_TIMEOUT
                     ) -> type[H11Protocol]:
    """An h11 protocol class for uvicorn's Config(http=...): a connection waiting for a request head
    longer than header_timeout is closed, and so is one whose body has not ended body_timeout seconds
    after its head, plus a second for every MIN_BODY_RATE bytes of it received (MAX_BODY_TIME at most).
    Past max_connections open ones, the oldest *suspect* is closed. Connections busy with a request (all
    of it received, the answer pending) are never closed for the cap.

    A suspect is a connection that has sent part of a head, or sits idle between requests, or has sent
    nothing for UNREAD_GRACE seconds, or is sending a body: a thousand bodies trickled a byte at a time
    held every descriptor as surely as heads did. A body that keeps up with MIN_BODY_RATE (counted from
    its head) goes to the back of the line with each packet, so a trickled one is closed before an upload.
    A connection not read yet is not a suspect: a burst of accepts (up to ACCEPT_BATCH) is handed to the
    protocol before any of them is read, and closing the oldest waiting connection then closed real
    clients whose complete request was already in the socket. The burst fits in the IN_FLIGHT
    descriptors connection_cap keeps free, and is sorted out as soon as it is read. While no suspect is
    left to close, check_room keeps a CappedSocket from accepting more."""
    suspects: dict[H11Protocol, None] = {}  # oldest first
    unread: dict[H11Protocol, float] = {}  # connected, nothing received yet: when it connected
    closing: set[H11Protocol] = set()  # closed by us, still among uvicorn's connections until it is gone
    retry: asyncio.TimerHandle | None = None  # a later shed, for when only unread connections are over the cap
    room_made = float("-inf")  # when make_room last closed connections

    def shed(loop: asyncio.AbstractEventLoop, connections: set, limit: int = max_connections) -> None:
        """Close suspects, oldest first, until at most limit connections are open."""
        nonlocal retry
        if len(connections) - len(closing) <= limit:
            return  # the common case, on every packet: nothing to look at
        now = loop.time()
        for old in [c for c, since in unread.items() if now - since >= UNREAD_GRACE]:
            unread.pop(old)
            suspects[old] = None
        while len(connections) - len(closing) > limit and suspects:
            next(iter(suspects)).drop()
        if len(connections) - len(closing) > limit and unread and (retry is None or retry.when() <= now):
            retry = loop.call_later(UNREAD_GRACE, shed, loop, connections)

    class GuardedH11Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None
        waiting_for: type | None = None  # h11.IDLE: for a head; h11.SEND_BODY: for the rest of a body
        body_start = 0.0  # when the body being waited for began
        body_received = 0  # bytes received since then

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            unread[self] = self.loop.time()
            self.track()
            shed(self.loop, self.connections)

        def data_received(self, data: bytes) -> None:
            unread.pop(self, None)
            if self.waiting_for is h11.SEND_BODY:
                self.body_received += len(data)
                if self.body_received >= MIN_BODY_RATE * (self.loop.time() - self.body_start):
                    suspects.pop(self, None)
                    suspects[self] = None  # keeping up: the newest suspect
            super().data_received(data)
            self.track()
            shed(self.loop, self.connections)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.track()  # the next request's head is due within header_timeout too

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self.stop_waiting()
            unread.pop(self, None)
            closing.discard(self)

        def track(self) -> None:
            """Start the head's deadline when the connection begins to wait for one, and the body's when the
            head is complete; stop both once the request is. Data arriving meanwhile does not move the head's
            deadline: trickling cannot help."""
            state = None if self.transport.is_closing() else self.conn.their_state
            if state is not h11.IDLE and state is not h11.SEND_BODY:
                return self.stop_waiting()
            if state is not self.waiting_for:
                self.stop_waiting()
                self.waiting_for = state
                if state is h11.IDLE:
                    self.deadline = self.loop.call_later(header_timeout, self.drop)
                else:
                    self.body_start, self.body_received = self.loop.time(), 0
                    self.deadline = self.loop.call_later(body_timeout, self.check_body)
            if self not in unread:
                suspects.setdefault(self, None)

        def check_body(self) -> None:
            """Close the connection if its body is past its deadline, else look again when that comes."""
            due = self.body_start + min(body_timeout + self.body_received / MIN_BODY_RATE, MAX_BODY_TIME)
            if self.loop.time() >= due:
                self.drop()
            else:
                self.deadline = self.loop.call_at(due, self.check_body)

        def stop_waiting(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None
            self.waiting_for = None
            suspects.pop(self, None)

        def drop(self) -> None:
            """Close the connection (a request it was sending ends as a client disconnect)."""
            self.stop_waiting()
            closing.add(self)
            self.transport.close()

        @staticmethod
        def check_room(loop: asyncio.AbstractEventLoop, connections: set) -> None:
            """Close a suspect if that is what one more connection needs; if none is left, raise what
            makes asyncio stop accepting: BlockingIOError for this round (connections just accepted are
            read in the next, and may turn out suspect), else EMFILE (for a second)."""
            shed(loop, connections, max_connections - 1)
            if len(connections) - len(closing) < max_connections:
                return
            if unread and loop.time() - next(reversed(unread.values())) < READ_SOON:
                raise BlockingIOError
            raise OSError(errno.EMFILE, "at the connection cap")

        @staticmethod
        def make_room(loop: asyncio.AbstractEventLoop, connections: set) -> None:
            """Close up to ACCEPT_BATCH suspects, once a second at most: the process is out of descriptors,
            taken by what the cap does not count (accepted connections not handed over yet, files)."""
            nonlocal room_made
            if loop.time() - room_made >= 1.0:
                room_made = loop.time()
                shed(loop, connections, max(0, len(connections) - len(closing) - ACCEPT_BATCH))

    return GuardedH11Protocol


class CappedSocket(socket.socket):
    """A listening socket that accepts nothing while the server is at its connection cap (check_room, set
    by ListeningServer, raises): meanwhile new connections wait in the kernel's queue, costing no
    descriptor."""

    def check_room(self) -> None:
        """Raise to accept nothing now (see guarded_protocol's check_room)."""

    def accept(self) -> tuple[socket.socket, object]:
        self.check_room()
        return super().accept()


class ListeningServer(uvicorn.Server):
    """uvicorn's server for a guarded_protocol (its Config's http), with BACKLOG connections queued by the
    kernel: asyncio listens again with the backlog uvicorn is given, which is also how many it accepts in
    one round, and so is ACCEPT_BATCH. A CappedSocket stops accepting at the cap; an accept refused or
    failed for want of descriptors (asyncio then waits a second) makes room for the next."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        loop, protocol, connections = asyncio.get_running_loop(), self.config.http_protocol_class, \
            self.server_state.connections
        for sock in sockets or []:
            sock.listen(BACKLOG)
            if isinstance(sock, CappedSocket):
                sock.check_room = functools.partial(protocol.check_room, loop, connections)  # type: ignore
        loop.set_exception_handler(self.loop_error)

    def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio's report of an error in no task (logged as usual); an accept refused or failed for want
        of descriptors also makes room."""
        if getattr(context.get("exception"), "errno", None) in (errno.EMFILE, errno.ENFILE):
            self.config.http_protocol_class.make_room(loop, self.server_state.connections)
        loop.default_exception_handler(context)


class OncePer(logging.Filter):
    """Lets each warning or error through once per `seconds`, saying how many like it were held back:
    asyncio logs a traceback for each accept that finds no descriptor, up to 128 a round (18 MB in 15 s)."""

    def __init__(self, seconds: float = 10.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.seen: dict[object, tuple[float, int]] = {}  # message template: when last shown, held back since

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        shown, held = self.seen.get(record.msg, (float("-inf"), 0))
        if now - shown < self.seconds:
            self.seen[record.msg] = (shown, held + 1)
            return False
        self.seen[record.msg] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {now - shown:.0f} s not shown)"
        return True
