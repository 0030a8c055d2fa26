"""A throw-away PostgreSQL server for the tests and benchmarks that need a real database (`fashion-cnn tune
--storage postgresql://...`): initdb and pg_ctl on a Unix socket in a temporary folder, no TCP, trust
authentication, removed when stopped. Not part of the shipped package.

Debian's `postgresql` package provides the binaries (`make setup-test` installs it). initdb refuses to run
as root, so as root the server runs as the `postgres` system user (runuser), in a folder that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

USER = "fashion"  # the database's superuser; trust authentication over the socket, so no password
DATABASE = "optuna"


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be started here: the reason, for a skip message."""


def bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb (Debian's layout), else initdb's on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                   if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    """A port number for the socket's name (no TCP listener is opened; the number keeps servers apart)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`with PostgresServer() as url:` a fresh server and its database for the length of the block."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        if self.bin is None:
            raise PostgresUnavailable("PostgreSQL is not installed (apt-get install postgresql)")
        self.owner = None
        if os.geteuid() == 0:  # initdb will not run as root: use the postgres system user
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root, and there is no postgres user to run PostgreSQL as") from None
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root, and runuser (util-linux) is missing")
        self.dir: Path | None = None
        self.port = free_port()

    def run(self, *command: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.owner.pw_name, "--"] if self.owner else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)

    def start(self) -> str:
        """Start the server; returns the database's URL. PostgresUnavailable says why it did not start."""
        self.dir = Path(tempfile.mkdtemp(prefix="fashion-cnn-pg-"))  # short: a socket path has ~100 bytes
        if self.owner:
            os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)
        steps = [[str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", USER, "--auth=trust", "-E", "UTF8"],
                 self.start_command(),
                 [str(self.bin / "createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", USER, DATABASE]]
        for command in steps:
            try:
                self.run_step(command)
            except PostgresUnavailable:
                self.stop()
                raise
        return self.url

    def start_command(self) -> list[str]:
        """pg_ctl's command that starts the server on its Unix socket (and waits for it)."""
        return [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log.txt"), "-w", "-t",
                "60", "-o", f"-c listen_addresses='' -k {self.dir} -p {self.port} -c fsync=off", "start"]

    def run_step(self, command: list[str]) -> None:
        """Run one of the server's commands; PostgresUnavailable with its last words if it fails."""
        done = self.run(*command)
        if done.returncode:
            detail = (done.stderr or done.stdout).strip().splitlines()
            logfile = self.dir / "log.txt"
            if logfile.exists():
                detail += logfile.read_text(errors="replace").strip().splitlines()
            raise PostgresUnavailable(f"{Path(command[0]).name} failed: {' | '.join(detail[-3:])}")

    def halt(self) -> None:
        """Stop the server as a crash would, keeping its data: its clients' connections drop."""
        self.run_step([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"])

    def restart(self) -> None:
        """Start the halted server again, with its data."""
        self.run_step(self.start_command())

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@/{DATABASE}?host={self.dir}&port={self.port}"

    def stop(self) -> None:
        """Stop the server (immediately: it holds nothing worth keeping) and remove its folder."""
        if self.dir is None:
            return
        if (self.dir / "data" / "postmaster.pid").exists():
            self.run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> str:
        # A plain `kill` ends Python without unwinding, which would leave the server running: make it unwind.
        self.previous_handler = None
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        return self.start()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self.previous_handler is not None:
                signal.signal(signal.SIGTERM, self.previous_handler)
