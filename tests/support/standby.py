"""A throwaway PostgreSQL primary and its streaming hot standby, built for one test.

``initdb`` and ``pg_basebackup -R`` on free ports, run by ``pg_ctl`` as the ``postgres``
OS user, in a temporary directory that is removed afterwards. The machine's own cluster
is never touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.support.procs import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"{name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


def _as_postgres(*argv: str) -> None:
    cmd = list(argv)
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@dataclass(frozen=True)
class Pair:
    primary_port: int
    standby_port: int

    def url(self, port: int, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{database}"

    def dsn(self, port: int, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={port} user=postgres dbname={database}"

    def caught_up(self, timeout: float = 30.0) -> None:
        """Wait until the standby has replayed everything the primary has written."""
        with psycopg.connect(self.dsn(self.primary_port), autocommit=True) as p:
            row = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            target = row[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.dsn(self.standby_port), autocommit=True) as s:
            while time.monotonic() < deadline:
                done = s.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
                ).fetchone()
                if done and done[0]:
                    return
                time.sleep(0.05)
        raise AssertionError(f"the standby did not replay up to {target} in {timeout}s")


@contextlib.contextmanager
def primary_and_standby() -> Iterator[Pair]:
    root = Path(tempfile.mkdtemp(prefix="convrs-replica-"))
    shutil.chown(root, "postgres", "postgres")
    primary, standby = root / "primary", root / "standby"
    pair = Pair(free_port(), free_port())
    started: list[Path] = []
    try:
        _as_postgres(_bin("initdb"), "-D", str(primary), "-A", "trust", "-U", "postgres")
        settings = (
            f"port = {pair.primary_port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{root}'\nautovacuum = off\n"
            "wal_level = replica\nmax_wal_senders = 4\nfsync = off\n"
        )
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(settings)
        _as_postgres(_bin("pg_ctl"), "-D", str(primary), "-w", "-l", str(root / "p.log"), "start")
        started.append(primary)
        _as_postgres(
            _bin("pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(pair.primary_port),
            "-U",
            "postgres",
            "-D",
            str(standby),
            "-R",
            "-X",
            "stream",
        )
        with (standby / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {pair.standby_port}\nhot_standby = on\n")
        _as_postgres(_bin("pg_ctl"), "-D", str(standby), "-w", "-l", str(root / "s.log"), "start")
        started.append(standby)
        yield pair
    finally:
        for data in reversed(started):
            with contextlib.suppress(subprocess.SubprocessError):
                _as_postgres(_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
