"""`fashion-cnn serve` in a child process, for the tests and benchmarks that need a real server
(a browser, or clients in another process). Not part of the shipped package."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO, Callable, Iterator


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def descriptor_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn giving the child process at most limit file descriptors (Unix)."""
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@contextlib.contextmanager
def server_process(model: str | Path, host: str = "127.0.0.1", timeout: float = 60, fd_limit: int | None = None,
                   **run_options) -> Iterator[str]:
    """`fashion-cnn serve` in a child process for the length of a with block; yields its base URL.

    For tests and benchmarks that need a real server (a browser, or clients in another process).
    fd_limit: the child's file descriptor limit. run_options: further arguments of `serve.run`, which
    then starts the server instead of the command line.
    """
    with served(model, host, timeout, fd_limit, **run_options) as (url, _):
        yield url


@contextlib.contextmanager
def served(model: str | Path, host: str = "127.0.0.1", timeout: float = 60, fd_limit: int | None = None,
           **run_options) -> Iterator[tuple[str, subprocess.Popen]]:
    """server_process, yielding the child process too."""
    port = free_port(host)
    url = f"http://{host}:{port}"
    command = [sys.executable, "-m", "fashion_cnn", "serve", "--model", str(model),
               "--host", host, "--port", str(port)]
    if run_options:
        command = [sys.executable, "-c", "import json, sys; from fashion_cnn.app.serve import run; "
                   "run(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]), **json.loads(sys.argv[4]))",
                   str(model), host, str(port), json.dumps(run_options)]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: nobody reads it, and pipes fill up
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  preexec_fn=None if fd_limit is None else descriptor_limit(fd_limit))
        try:
            wait_until_healthy(url, server, timeout, log)
            yield url, server
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float, log: IO[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    log.seek(0)
    output = log.read().decode(errors="replace")[-2000:]
    raise RuntimeError(f"the server at {url} did not start (exit code {server.poll()}):\n{output}")
