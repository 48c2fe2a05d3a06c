"""The documents stay true: the contract page names every metric the exporter serves with
the allowed values the code enforces, every link between the README and docs/ leads
somewhere, and what the configuration examples cite exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter import contract
from exporter.health import Health

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CHANGELOG.md"]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings."""
    out = set()
    for line in page.read_text().splitlines():
        if m := re.match(r"^#{1,6} (.+)$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_the_contract_names_every_metric_and_its_allowed_values() -> None:
    page = (ROOT / "docs" / "contract.md").read_text()
    for metric in contract.ORGANIZATION_METRICS:
        sample = metric.name + ("_total" if metric.kind == "counter" else "")
        row = next((ln for ln in page.splitlines() if ln.startswith(f"| `{sample}` |")), None)
        assert row, f"docs/contract.md lacks {sample}"
        for label, values in metric.allowed.items():
            if label in metric.labels:
                assert all(f"`{v}`" in row for v in values), (sample, values)
    for direction, senders in contract.SENDERS.items():
        assert f"`{senders[-1]}`" in page and direction in page
    health = Health(["messages"])
    for family in health.registry.collect():
        if not family.name.startswith("convrs_"):
            continue  # prometheus-client's own process and GC metrics
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in page, f"docs/contract.md lacks the health metric {name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_the_documents_lead_somewhere(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: {target} leads nowhere"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: {target}: no such heading"


def test_what_the_configuration_examples_cite_exists() -> None:
    """A comment that sends the reader to a README section names one that is there."""
    headings = {a.replace("-", " ") for a in _anchors(ROOT / "README.md")}
    for example in (ROOT / "config").rglob("*.yml"):
        lines = example.read_text().splitlines()
        comments = " ".join(ln.strip().lstrip("#").strip() for ln in lines if ln.strip()[:1] == "#")
        if "see README" not in comments:
            continue
        for cited in re.findall(r'"([^"]+)"', comments):
            key = re.sub(r"[^\w\- ]", "", cited.lower())
            assert key in headings, f"{example.name} cites a README section {cited!r}"
