from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from exporter import demo
from exporter.memory import thaw_heap
from tests.support import pg

SMALL_ORGS = (
    ("Acme Retail", 900),
    ('Le "Petit" Café', 300),
    ("Back\\slash\nLabs", 120),
    ("Tiny", 20),
)


@pytest.fixture(autouse=True)
def _gc_as_found() -> Iterator[None]:
    """A collection's first count freezes the heap and stops automatic full GC runs for the
    process (memory.py); each test gets the collector back as it was."""
    yield
    thaw_heap()


@pytest.fixture
def pg_url() -> Iterator[str]:
    with pg.throwaway_database() as url:
        yield url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    eng = pg.engine(pg_url)
    yield eng
    eng.dispose()


@pytest.fixture
def seeded(pg_engine: Engine) -> Engine:
    """The reference schema with a known, deterministic data set."""
    demo.seed(pg_engine, orgs=SMALL_ORGS, seed=1)
    return pg_engine


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
