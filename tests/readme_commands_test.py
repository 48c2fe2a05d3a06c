"""The README's first of its two commands, from a fresh clone: ``make run`` installs the
exporter alone and serves the demo database. (The second, ``make test``, is what CI runs
on a fresh clone: .ci/run.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from tests.support.procs import free_port, http_get, wait_until

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_names_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Two commands") :].split("\n## ")[0]
    commands = re.findall(r"^    (make \w+)", block, re.M)
    assert commands == ["make run", "make test"]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_make_run_from_a_fresh_clone_serves_the_demo(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=60)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "CONVRS_"))}
    proc = subprocess.Popen(
        ["make", "run", f"ARGS=--web.listen-address 127.0.0.1:{port}"],
        cwd=clone,
        env=env,
        stdout=(tmp_path / "run.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: proc.poll() is None and http_get(url + "/readyz")[0] == 200,
            timeout=240,
            what=f"make run to serve (log: {(tmp_path / 'run.log').read_text()[-2000:]})",
        )
        status, _, body = http_get(url + "/metrics")
        assert status == 200 and b"convrs_messages_total{" in body
        status, _, page = http_get(url + "/organizations")
        assert status == 200 and b"Inbound Messages" in page
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    venv = clone / ".venv"
    assert (venv / "bin" / "convrs-exporter").exists()
    assert not (venv / "bin" / "pytest").exists()  # the runtime alone, not the test toolchain
    assert (
        "no database configured: serving the embedded demo database"
        in (tmp_path / "run.log").read_text()
    )
