"""What an attacker and a bad network found (second round), each against the real thing:
the CLI as a process, the HTTP server on a real socket, a real PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
import yaml
from sqlalchemy import Engine, text

from exporter.config import Config, reference_mapping
from exporter.errors import ConfigError
from exporter.exposition import Exposition
from exporter.health import Health
from exporter.http import App, Server
from exporter.mapping import build_specs
from exporter.runtime import prepare
from exporter.webconfig import BasicAuth
from tests.support import pg
from tests.support.expo import in_process, served
from tests.support.procs import Exporter, http_get, wait_until
from tests.support.procs import run_cli as cli
from tests.support.tcpproxy import TcpProxy

SECRET = "S3cr3tPW-hunter2"  # noqa: S105 - must never be printed
PASSWORD = "correct horse"  # noqa: S105 - the test's own


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def web_file(tmp: Path, **extra: Any) -> Path:
    users = {"prom": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}
    path = tmp / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": users, **extra}))
    return path


# --- 1. the telemetry path is never opened -------------------------------------------


@pytest.mark.parametrize(("telemetry", "open_paths"), [("/", ["/"]), ("/healthz", ["/healthz"])])
def test_a_web_config_that_would_open_the_metrics_is_refused(
    tmp: Path, telemetry: str, open_paths: list[str]
) -> None:
    web = web_file(tmp, unauthenticated_paths=open_paths)
    result = cli("--config.check", "--web.telemetry-path", telemetry, "--web.config.file", str(web))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert f"{telemetry} is the telemetry path" in line and "unauthenticated_paths" in line
    # and a reload to it is refused: prepare() is what a reload runs first
    config = Config.model_validate(
        {
            "database": {"url": "sqlite://"},
            "web": {"telemetry_path": telemetry, "config_file": str(web)},
            "mapping": reference_mapping(),
        }
    )
    with pytest.raises(ConfigError, match="unauthenticated_paths"):
        prepare(config, None)


# --- 2, 3, 6. basic auth: timing, floods, odd input ------------------------------------


def test_an_unknown_user_costs_what_a_known_one_does() -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    auth = BasicAuth({"prom": hashed, "cheap": bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()})

    from exporter.webconfig import _cost

    assert _cost(auth._dummy) == 10  # the users' highest cost, not 4


@contextlib.contextmanager
def serving(
    authorize: Any = None, reload: Any = None, **limits: Any
) -> Iterator[tuple[Server, int]]:
    specs = build_specs(Config.model_validate({"mapping": reference_mapping()}))
    ready = threading.Event()
    ready.set()
    app = App(Exposition(specs, ready), Health([]), ready, authorize=authorize, reload=reload)
    server = Server(("127.0.0.1", 0), app)
    for name, value in limits.items():
        setattr(server, name, value)
    server.serve_in_thread()
    try:
        yield server, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def basic(user: str, password: str | bytes) -> str:
    raw = password if isinstance(password, bytes) else password.encode()
    return "Basic " + base64.b64encode(user.encode() + b":" + raw).decode()


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := sock.recv(65536):
                out += chunk
        return out


def test_a_flood_of_wrong_passwords_runs_one_bcrypt_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(8)).decode()
    auth = BasicAuth({"prom": hashed})
    running, most = [0], [0]
    lock = threading.Lock()
    real = bcrypt.checkpw

    def counted(password: bytes, hashed_password: bytes) -> bool:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return real(password, hashed_password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(bcrypt, "checkpw", counted)
    with serving(authorize=auth) as (_, port):
        url = f"http://127.0.0.1:{port}/metrics"
        assert http_get(url, {"Authorization": basic("prom", PASSWORD)})[0] == 200  # cached now
        stop = time.monotonic() + 3.0
        codes: list[int] = []

        def flood(n: int) -> None:
            i = 0
            while time.monotonic() < stop:
                i += 1
                codes.append(http_get(url, {"Authorization": basic("prom", f"bad{n}-{i}")})[0])

        threads = [threading.Thread(target=flood, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        good = [http_get(url, {"Authorization": basic("prom", PASSWORD)})[0] for _ in range(20)]
        for t in threads:
            t.join()
    assert good == [200] * 20
    assert codes and set(codes) == {401}
    assert most[0] == 1  # at most one bcrypt check at any moment


def test_odd_credentials_and_bodies_get_a_4xx_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    with serving(authorize=BasicAuth({"prom": hashed}), reload=lambda: (True, "reloaded")) as (
        _,
        port,
    ):
        raw = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic \xff\xfe\xc3\x28\r\n\r\n"
        assert raw_request(port, raw).startswith(b"HTTP/1.1 401")
        long_password = basic("prom", "p" * 100).encode()
        req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: " + long_password + b"\r\n\r\n"
        assert raw_request(port, req).startswith(b"HTTP/1.1 401")
        auth = basic("prom", PASSWORD).encode()
        post = (
            b"POST /-/reload HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + auth
            + b"\r\nContent-Length: abc\r\n\r\n"
        )
        assert raw_request(port, post).startswith(b"HTTP/1.1 400")
        for _ in range(5):  # client resets mid-request
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            sock.close()
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert "Traceback" not in err


# --- 5. limits on what a request may cost before it is authenticated -------------------


def test_headers_too_large_are_refused_with_431() -> None:
    with serving(max_header_bytes=16 * 1024) as (_, port):
        big = b"".join(b"X-Pad-%d: " % i + b"a" * 1000 + b"\r\n" for i in range(40))
        answer = raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431")


def test_slow_headers_are_cut_and_idle_connections_make_room() -> None:
    with serving(header_timeout=1.0, max_connections=32) as (server, port):
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
        for s in slow:
            s.sendall(b"G")
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        time.sleep(0.3)
        assert server.open_connections() <= 32
        assert threading.active_count() < 32 + 20
        # a well-behaved client still gets in (it takes an idle connection's place)
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        started = time.monotonic()
        cut: set[int] = set()
        while len(cut) < len(slow) and time.monotonic() - started < 4.0:
            for n, s in enumerate(slow):  # a byte at a time: every read within its timeout
                if n in cut:
                    continue
                try:
                    s.sendall(b"E")
                    s.setblocking(False)
                    if s.recv(1024) == b"":
                        cut.add(n)
                except BlockingIOError:
                    pass
                except OSError:
                    cut.add(n)
            time.sleep(0.2)
        # each cut within the header timeout (1 s) of its first byte, and a little
        assert len(cut) == len(slow) and time.monotonic() - started < 3.0
        for s in slow + idle:
            s.close()


# --- 4, 11, 15. secrets, NUL bytes, temporary directories -------------------------------


def test_no_part_of_the_url_that_holds_a_secret_is_printed(seeded: Engine, tmp: Path) -> None:
    url = _url(seeded) + f"?password={SECRET}&sslpassword={SECRET}x&application_name=a"
    exp = Exporter(tmp, {"log": {"level": "debug"}}, env={"CONVRS_EXPORTER_DATABASE_URL": url})
    exp.start()
    exp.stop()
    log = exp.log()
    assert "listening" in log and "password=***" in log and SECRET not in log
    bad = cli(
        "--config.check",
        env={"CONVRS_EXPORTER_COLLECTION_INTERVAL": f"postgresql://u:{SECRET}@h/db"},
    )
    assert bad.returncode == 2 and SECRET not in bad.stderr + bad.stdout
    missing = f"/nonexistent/{SECRET}/url"
    bad = cli("--config.check", env={"CONVRS_EXPORTER_DATABASE_URL_FILE": missing})
    assert bad.returncode == 2 and SECRET not in bad.stderr + bad.stdout


def test_a_nul_byte_in_the_url_is_refused() -> None:
    url = "postgresql://u:S3cr3t%00Pa55@127.0.0.1:19760/db?sslmode=require"
    result = cli("--config.check", env={"CONVRS_EXPORTER_DATABASE_URL": url})
    assert result.returncode == 2
    assert "NUL" in result.stderr and "S3cr3t" not in result.stderr


def test_the_demo_leaves_no_temporary_directory(tmp: Path) -> None:
    env = {"TMPDIR": str(tmp)}
    assert cli("--config.check", env=env).returncode == 0
    (tmp / "run").mkdir()
    exp = Exporter(tmp / "run", env=env)
    exp.start()
    assert exp.stop() == 0
    assert [p.name for p in tmp.iterdir() if p.name.startswith("convrs-demo-")] == []


# --- 7, 10. what is a configuration error at start, and what is not ----------------------


def test_a_locked_table_is_not_a_configuration_error(seeded: Engine) -> None:
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={seeded.url.database}") as locker:
        locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        url = _url(seeded)
        env = {
            "CONVRS_EXPORTER_DATABASE_URL": url,
            "CONVRS_EXPORTER_DATABASE_STATEMENT_TIMEOUT": "1s",
        }
        result = cli("--config.check", env=env)
        assert result.returncode == 0, result.stderr
        assert "mapping not checked: messages: statement timeout (1s) exceeded" in result.stdout
        locker.rollback()


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda u: u.replace("postgres@", "nosuchrole@"), 'role "nosuchrole" does not exist'),
        (lambda u: u.rsplit("/", 1)[0] + "/nosuchdb", 'database "nosuchdb" does not exist'),
    ],
)
def test_a_connection_the_database_refuses_is_a_configuration_error(
    seeded: Engine, change: Any, said: str
) -> None:
    result = cli("--config.check", env={"CONVRS_EXPORTER_DATABASE_URL": change(_url(seeded))})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "the database refused the connection" in line and said in line


def test_a_database_that_does_not_answer_passes_the_check_and_says_so() -> None:
    url = "postgresql://postgres@127.0.0.1:1/convrs"
    result = cli("--config.check", env={"CONVRS_EXPORTER_DATABASE_URL": url})
    assert result.returncode == 0
    assert "database not reachable: the mapping was not checked" in result.stdout


# --- 12. NULL org ids and label values ----------------------------------------------------


def test_rows_with_a_null_org_are_skipped_and_counted(seeded: Engine) -> None:
    with seeded.begin() as conn:
        n_flows = conn.execute(text("SELECT count(*) FROM flows WHERE org_id = 1")).scalar_one()
        n_msgs = conn.execute(text("SELECT count(*) FROM messages WHERE org_id = 1")).scalar_one()
    messages = {**reference_mapping()["messages"], "org": "NULLIF(messages.org_id, 1)"}
    mapping = {
        "flows": {"table": "flows", "org": "NULLIF(flows.org_id, 1)"},
        "messages": messages,
        "bots": {
            "table": "bots",
            "org": "bots.org_id",
            "labels": {"channel": "NULLIF(bots.channel, 'sms')"},
        },
    }
    coll, _ = in_process(_url(seeded), {"collection": {"settle_after": "1ms"}, "mapping": mapping})
    assert coll.run()
    got, want = served(coll), pg.reference_counts(seeded)
    assert got["convrs_messages_total"] == {
        k: v for k, v in want["convrs_messages_total"].items() if k[0] != "1"
    }
    h = coll.health.registry.get_sample_value
    skipped = {"reason": "null_org"}
    assert h("convrs_exporter_rows_skipped_total", {"query": "flows", **skipped}) == 1  # 1 group
    assert h("convrs_exporter_rows_skipped_total", {"query": "messages", **skipped}) >= 1
    assert ("", "") not in got["convrs_flows"] and all(k[0] for k in got["convrs_flows"])
    assert any(k[1] == "unknown" for k in got["convrs_bots"])  # a NULL label value
    key = next(k for k in want["convrs_messages_total"] if k[0] == "2")
    with seeded.begin() as conn:  # a steady count (orgs as arrays) skips them too
        for org in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO messages (org_id, direction, sender_type, channel) "
                    "VALUES (:org, :direction, :sender, :channel)"
                ),
                {"org": org, "direction": key[1], "channel": key[2], "sender": key[3]},
            )
    assert coll.run() and coll.run()
    assert served(coll)["convrs_messages_total"][key] == want["convrs_messages_total"][key] + 1
    assert h("convrs_exporter_rows_skipped_total", {"query": "messages", **skipped}) >= 2
    assert n_flows and n_msgs
    coll.db.close()


# --- 8, 9, 13. a stalled network, and stopping whatever runs --------------------------------


def test_a_stalled_network_abandons_the_collection(seeded: Engine, tmp: Path) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    url = _url(seeded).replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    exp = Exporter(
        tmp,
        {
            "collection": {"interval": "2s"},
            "database": {"statement_timeout": "500ms", "connect_timeout": "1s"},
        },
        env={"CONVRS_EXPORTER_DATABASE_URL": url},
    )
    exp.start()
    try:
        proxy.stall()
        wait_until(
            lambda: "convrs_up 0" in exp.metrics(), timeout=30, what="convrs_up 0 while stalled"
        )
        assert "abandoned" in exp.log() or "abandoning" in exp.log()
        started = time.monotonic()
        exp.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        assert exp.proc.wait(10) == 0  # type: ignore[union-attr]
        assert time.monotonic() - started < 6
    finally:
        proxy.stalled.clear()
        proxy.cut()
        exp.stop()


def waiting_for_a_lock(dbname: str | None) -> bool:
    """Whether one of the exporter's sessions in this database waits for a lock."""
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={dbname}", autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'convrs-exporter' AND wait_event_type = 'Lock'"
        ).fetchone()
        return bool(row and row[0])


def test_sigterm_and_sigint_during_the_start_up_check_exit_0_at_once(
    seeded: Engine, tmp: Path
) -> None:
    dbname = seeded.url.database
    for sig in (signal.SIGTERM, signal.SIGINT):
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={dbname}") as locker:
            locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            proc = subprocess.Popen(
                [sys.executable, "-m", "exporter.cli", "--web.listen-address", "127.0.0.1:0"],
                env={
                    **os.environ,
                    "CONVRS_EXPORTER_DATABASE_URL": _url(seeded),
                    "CONVRS_EXPORTER_DATABASE_STATEMENT_TIMEOUT": "20s",
                },
                stderr=subprocess.PIPE,
                text=True,
            )

            wait_until(
                lambda: waiting_for_a_lock(dbname),
                timeout=20,
                what="the start-up check to wait for the lock",
            )
            started = time.monotonic()
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            assert time.monotonic() - started < 4
            assert "Traceback" not in err
            assert not waiting_for_a_lock(dbname)  # its statement was cancelled, not left
            locker.rollback()


def test_a_query_cancelled_by_a_stop_is_not_called_a_timeout(seeded: Engine) -> None:
    slow = "SELECT org_id AS org, count(*) AS value FROM flows, pg_sleep(5) GROUP BY 1"
    coll, _ = in_process(
        _url(seeded),
        {
            "database": {"statement_timeout": "8s"},
            "mapping": {"flows": {"query": slow}},
        },
    )
    threading.Timer(1.0, coll.cancel).start()
    assert coll.run(["flows"]) is False
    assert coll._failing["flows"] == "cancelled: the exporter is stopping"
    coll.db.close()


def test_sigterm_during_a_reload_stuck_on_a_lock_exits_0_promptly(
    seeded: Engine, tmp: Path
) -> None:
    dbname = seeded.url.database
    exp = Exporter(
        tmp,
        {"database": {"statement_timeout": "20s"}},
        env={"CONVRS_EXPORTER_DATABASE_URL": _url(seeded)},
    )
    exp.start()
    assert exp.proc is not None
    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={dbname}") as locker:
        locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        exp.proc.send_signal(signal.SIGHUP)  # the reload's check waits for the lock

        wait_until(
            lambda: waiting_for_a_lock(dbname), timeout=20, what="the reload to wait for the lock"
        )
        started = time.monotonic()
        exp.proc.send_signal(signal.SIGTERM)
        assert exp.proc.wait(15) == 0
        assert time.monotonic() - started < 6  # the grace period (3 s) and a little
        locker.rollback()
