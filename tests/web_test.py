"""The web configuration file: TLS and basic auth, checked with a real HTTPS client and
scraped by Prometheus with its own tls_config and basic_auth."""

from __future__ import annotations

import base64
import ssl
import subprocess
import urllib.error
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from sqlalchemy import Engine

from tests.support import pg
from tests.support.expo import parse
from tests.support.procs import Exporter, Prometheus, http_get, wait_until

PASSWORD = "correct horse battery staple"  # noqa: S105 - the test's own


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


def signed(tmp: Path, name: str, cn: str, *extra: str) -> tuple[Path, Path]:
    """A key and a certificate for ``cn`` (``<name>.key``, ``<name>.crt``) signed by the CA
    that ``make_certs`` made in ``tmp``."""
    openssl(
        tmp,
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr"),
    )
    openssl(
        tmp,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "2", *extra, "-out", f"{name}.crt"),
    )
    return tmp / f"{name}.crt", tmp / f"{name}.key"


def make_certs(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    openssl(
        tmp,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
        *("-subj", "/CN=test ca", "-keyout", "ca.key", "-out", "ca.crt"),
    )
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    cert, key = signed(tmp, "server", "127.0.0.1", "-extfile", "san.ext")
    return tmp / "ca.crt", cert, key


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def https_exporter(seeded: Engine, tmp: Path, web: dict[str, Any], ca: Path) -> Exporter:
    """The exporter with this web config, and an HTTPS client that trusts ``ca`` and sends
    the right basic-auth password (not started)."""
    path = tmp / "web.yml"
    path.write_text(yaml.safe_dump(web))
    url = seeded.url.render_as_string(hide_password=False)
    exp = Exporter(
        tmp,
        {"collection": {"interval": "1s"}, "database": {"statement_timeout": "500ms"}},
        env={"CONVRS_EXPORTER_DATABASE_URL": url},
        args=["--web.config.file", str(path)],
    )
    exp.scheme = "https"
    exp.context = ssl.create_default_context(cafile=str(ca))
    exp.headers = basic("prometheus", PASSWORD)
    return exp


def test_tls_and_basic_auth(seeded: Engine, tmp: Path) -> None:
    ca, cert, key = make_certs(tmp)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web = {
        "tls_server_config": {"cert_file": cert.name, "key_file": key.name, "min_version": "TLS12"},
        "basic_auth_users": {"prometheus": hashed},
    }
    exp = https_exporter(seeded, tmp, web, ca).start()
    try:
        assert parse(exp.metrics())["convrs_flows"] == pg.reference_counts(seeded)["convrs_flows"]
        assert exp.get("/metrics", basic("prometheus", "wrong"))[0] == 401
        assert exp.get("/metrics", basic("nobody", PASSWORD))[0] == 401
        status, headers, _ = http_get(exp.url + "/metrics", context=exp.context)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP: no answer
            http_get(f"http://127.0.0.1:{exp.port}/metrics", timeout=3)
        with pytest.raises(urllib.error.URLError):  # a client that does not trust the CA
            http_get(exp.url + "/metrics", context=ssl.create_default_context())

        (tmp / "pw").write_text(PASSWORD)
        prom = Prometheus(
            tmp,
            [f"127.0.0.1:{exp.port}"],
            extra_scrape={
                "scheme": "https",
                "tls_config": {"ca_file": str(ca)},
                "basic_auth": {"username": "prometheus", "password_file": str(tmp / "pw")},
            },
        ).start()
        try:
            want = pg.reference_counts(seeded)["convrs_flows"]
            wait_until(
                lambda: prom.values("convrs_flows", "org") == want,
                what="Prometheus to scrape over TLS with basic auth",
            )
        finally:
            prom.stop()
    finally:
        assert exp.stop() == 0, exp.log()
    assert PASSWORD not in exp.log()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("basic_auth_users:\n  a: plaintext\n", "basic_auth_users.a: not a bcrypt hash"),
        ("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n", "cannot load"),
        ("tls_config:\n  x: 1\n", "tls_config: unknown setting"),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: "
            "RequireAndVerifyClientCert\n",
            "needs client_ca_file",
        ),
    ],
)
def test_bad_web_config_exits_2(tmp: Path, text: str, words: str) -> None:
    import sys

    web = tmp / "web.yml"
    web.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "--web.config.file", str(web), "--config.check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and words in result.stderr and str(web) in result.stderr


def test_example_web_config_hash_is_real() -> None:
    from exporter.webconfig import BasicAuth, WebFile

    path = Path(__file__).parent.parent / "config" / "web-config.example.yml"
    users = WebFile.model_validate(yaml.safe_load(path.read_text())).basic_auth_users
    auth = BasicAuth(users)
    assert auth(basic("prometheus", "change me")["Authorization"])
    assert not auth(basic("prometheus", "change me!")["Authorization"])
    assert not auth("Basic !!!") and not auth(None) and not auth("Bearer x")


def test_mutual_tls_and_open_probe_paths(seeded: Engine, tmp: Path) -> None:
    ca, cert, key = make_certs(tmp)
    client = signed(tmp, "client", "scraper")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    web = {
        "tls_server_config": {
            "cert_file": cert.name,
            "key_file": key.name,
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": ca.name,
            "min_version": "TLS13",
        },
        "basic_auth_users": {"prometheus": hashed},
        "unauthenticated_paths": ["/healthz"],
    }
    exp = https_exporter(seeded, tmp, web, ca)
    exp.context.load_cert_chain(*client)
    exp.start()
    try:
        assert parse(exp.metrics())["convrs_flows"] == pg.reference_counts(seeded)["convrs_flows"]
        assert http_get(exp.url + "/healthz", context=exp.context)[0] == 200  # open path
        assert http_get(exp.url + "/metrics", context=exp.context)[0] == 401  # not open
        no_cert = ssl.create_default_context(cafile=str(ca))
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            http_get(exp.url + "/healthz", context=no_cert, timeout=5)
        tls12 = ssl.create_default_context(cafile=str(ca))
        tls12.load_cert_chain(*client)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
            http_get(exp.url + "/healthz", context=tls12, timeout=5)  # below min_version
    finally:
        assert exp.stop() == 0, exp.log()
