"""The platform's Organization Metrics page, per organization, from a snapshot: the six
cards (Bots, Agents, Flows, Users; Inbound and Outbound Messages with the date counting
began) and two ratio readings. Read from what /metrics serves (``exposition.families``),
so that what a person compares with the platform is what Prometheus stores.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from dataclasses import asdict, dataclass

from . import contract
from .exposition import families
from .mapping import Specs
from .snapshot import Snapshot


@dataclass(frozen=True)
class OrgCards:
    org: str
    name: str
    bots: int | None
    """None where the metric is not served (its query failing past stale_after)."""
    agents_active: int | None
    agents_disabled: int | None
    flows: int | None
    users: int | None
    inbound: int | None
    outbound: int | None
    inbound_since: float | None
    """Unix seconds: when counting began (the date under the card)."""
    outbound_since: float | None

    @property
    def agents(self) -> int | None:
        if self.agents_active is None or self.agents_disabled is None:
            return None
        return self.agents_active + self.agents_disabled

    @property
    def users_per_active_agent(self) -> float | None:
        """None without an active agent (as the dashboard and the alert read it)."""
        if self.users is None or not self.agents_active:
            return None
        return self.users / self.agents_active

    @property
    def outbound_per_inbound(self) -> float | None:
        """Since counting began; None without inbound messages."""
        if self.outbound is None or not self.inbound:
            return None
        return self.outbound / self.inbound

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "agents": self.agents,
            "users_per_active_agent": self.users_per_active_agent,
            "outbound_per_inbound": self.outbound_per_inbound,
        }


def organization_cards(specs: Specs, snapshot: Snapshot) -> list[OrgCards]:
    """Every organization of the snapshot, by name (then id)."""
    names: dict[str, str] = {}
    gauges: dict[str, dict[str, float]] = defaultdict(dict)
    # served: the metrics with fresh values (an org with no rows has none: 0, not "-")
    served = {g.metric.name for g in specs.gauges if g.key in snapshot.metrics}
    messages: dict[tuple[str, str], int] = defaultdict(int)
    since: dict[tuple[str, str], float] = {}
    for family in families(specs, snapshot):
        if family.name == contract.ORG_INFO.name:
            names = {s.labels[0]: s.labels[1] for s in family.series}
        elif family.name == contract.COUNTING_SINCE.name:
            since = {(s.labels[0], s.labels[1]): s.value for s in family.series}
        elif family.counts is not None:
            counts = family.counts
            for i in counts.counted:
                key = counts.keys[i]
                messages[key[0], key[1]] += counts.totals[i]
        else:
            for s in family.series:
                part = s.labels[1] if family.name == contract.AGENTS.name else ""
                slot = gauges[s.labels[0]]
                slot[family.name + part] = slot.get(family.name + part, 0.0) + s.value
    orgs = set(names) | set(gauges) | {org for org, _ in messages}

    def gauge(org: str, name: str, part: str = "") -> int | None:
        """A gauge's sum for the org (``part``: one agents status); None if not served."""
        if name not in served:
            return None
        return int(gauges.get(org, {}).get(name + part, 0))

    def count(org: str, direction: str) -> int | None:
        return messages.get((org, direction), 0) if snapshot.messages is not None else None

    agents = contract.AGENTS.name
    out = [
        OrgCards(
            org=org,
            name=names.get(org, org),
            bots=gauge(org, contract.BOTS.name),
            agents_active=gauge(org, agents, "active"),
            agents_disabled=gauge(org, agents, "disabled"),
            flows=gauge(org, contract.FLOWS.name),
            users=gauge(org, contract.USERS.name),
            inbound=count(org, "inbound"),
            outbound=count(org, "outbound"),
            inbound_since=since.get((org, "inbound")),
            outbound_since=since.get((org, "outbound")),
        )
        for org in orgs
    ]
    return sorted(out, key=lambda c: (c.name.casefold(), c.org))


def number(value: int | None) -> str:
    """As the cards show a count: thousands separated; a dash where there is none."""
    return "-" if value is None else f"{value:,}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def day(ts: float | None) -> str:
    """The date under a message card (UTC)."""
    if ts is None:
        return "no messages yet"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("since %Y-%m-%d")


def _printable(text: str) -> str:
    """A name from the database, safe for a terminal: control characters (an escape
    sequence in an org name) shown as their code."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def as_text(cards: list[OrgCards]) -> str:
    """The cards as the page lays them out: two rows per organization, then the ratios."""
    lines = []
    for c in cards:
        agents = f"{number(c.agents)} ({number(c.agents_active)} active, "
        agents += f"{number(c.agents_disabled)} disabled)"
        lines += [
            f"{_printable(c.name)} (org {_printable(c.org)})",
            f"  Bots {number(c.bots)} | Agents {agents} | Flows {number(c.flows)} | "
            f"Users {number(c.users)}",
            f"  Inbound Messages {number(c.inbound)} {day(c.inbound_since)} | "
            f"Outbound Messages {number(c.outbound)} {day(c.outbound_since)}",
            f"  Users per active agent {ratio(c.users_per_active_agent)} | "
            f"Outbound per inbound {ratio(c.outbound_per_inbound)}",
            "",
        ]
    return "\n".join(lines)


def as_json(cards: list[OrgCards]) -> str:
    return json.dumps({"organizations": [c.as_dict() for c in cards]}, indent=2)
