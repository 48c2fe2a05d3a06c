"""The metric contract (docs: "The six cards, as metrics"), as one table.

Mapping, exposition, the configuration check, the dashboard generator and the tests
read names, help texts, labels and their allowed values from here, never spell them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    """The metric's entry under ``mapping:`` in the configuration."""
    name: str
    """The exported family name (a counter's samples add ``_total`` and ``_created``)."""
    kind: str
    help: str
    labels: tuple[str, ...]
    """Labels the mapping gives, after ``org``, in exposition order."""
    allowed: dict[str, tuple[str, ...]]
    """Closed sets of label values; labels not named here are open (channel)."""
    zero_fill: tuple[str, ...] | None = None
    """Labels whose allowed values every known org gets a series for (0 where it has no
    rows): () for a metric with no labels, None where a label is open-ended."""

    def series_labels(self) -> tuple[str, ...]:
        return ("org", *self.labels)


BOTS = Metric("bots", "convrs_bots", "gauge", "Chatbots configured, by channel.", ("channel",), {})
AGENTS = Metric(
    "agents",
    "convrs_agents",
    "gauge",
    "Agent accounts, by status (active, disabled).",
    ("status",),
    {"status": ("active", "disabled")},
    zero_fill=("status",),
)
FLOWS = Metric("flows", "convrs_flows", "gauge", "Chatbot flows.", (), {}, zero_fill=())
USERS = Metric(
    "users",
    "convrs_users",
    "gauge",
    "Customers or contacts who interacted with the chatbots.",
    (),
    {},
    zero_fill=(),
)
MESSAGES = Metric(
    "messages",
    "convrs_messages",
    "counter",
    "Messages, inbound (from users) and outbound (from agents, bots and the "
    "system); created is when counting began.",
    ("direction", "channel", "sender"),
    {"direction": ("inbound", "outbound"), "sender": ("user", "agent", "bot", "system")},
)
COUNTING_SINCE = Metric(
    "messages",
    "convrs_messages_counting_since_timestamp_seconds",
    "gauge",
    "When message counting began for the organization and direction (Unix seconds).",
    ("direction",),
    MESSAGES.allowed,
)
ORG_INFO = Metric(
    "organizations",
    "convrs_org_info",
    "gauge",
    "Organization display names, always 1; join on org.",
    ("name",),
    {},
)

SENDERS: dict[str, tuple[str, ...]] = {"inbound": ("user",), "outbound": ("agent", "bot", "system")}
"""Which senders each direction has: inbound messages come from users; outbound ones from
agents, bots and the system."""


def unexpected(metric: Metric, values: dict[str, str]) -> tuple[str, str, str] | None:
    """The first label value outside the contract's closed sets, as (label, value, what is
    allowed), or None. ``values``: label values by label (the labels a deployment keeps)."""
    for label, value in values.items():
        allowed = metric.allowed.get(label)
        if allowed is not None and value not in allowed:
            return label, value, ", ".join(allowed)
    direction, sender = values.get("direction"), values.get("sender")
    if direction in SENDERS and sender is not None and sender not in SENDERS[direction]:
        return "sender", sender, f"{', '.join(SENDERS[direction])} for {direction}"
    return None


GAUGES: tuple[Metric, ...] = (BOTS, AGENTS, FLOWS, USERS)
"""The resource counts, in exposition order."""
ORGANIZATION_METRICS: tuple[Metric, ...] = (ORG_INFO, *GAUGES, MESSAGES, COUNTING_SINCE)
"""Every organization metric, in exposition order."""
MAPPED_LABELS: dict[str, tuple[str, ...]] = {m.key: m.labels for m in (*GAUGES, MESSAGES)}
"""The labels each mapping entry must give (besides org)."""
DROPPABLE_LABELS = ("channel", "sender")
"""Labels a deployment may drop (``labels.drop``): summed away."""


def sample_names() -> dict[str, tuple[str, ...]]:
    """Each organization metric's sample name and its labels, as a scrape shows them
    (the counter's samples are ``_total``; the text format carries no ``_created``)."""
    out = {}
    for m in ORGANIZATION_METRICS:
        out[m.name + "_total" if m.kind == "counter" else m.name] = m.series_labels()
    return out
