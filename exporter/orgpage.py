"""The built-in Organization Metrics page (``/organizations``): one organization's six cards
in the platform page's two rows, with the dates counting began and the two ratio
readings, and a picker with search. Rendered from the snapshot /metrics serves (never the
database), in one self-contained document (no external assets); every value from the
database is HTML-escaped."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from html import escape

from .cards import OrgCards, day, number, organization_cards, ratio
from .mapping import Specs
from .snapshot import Snapshot

PATH = "/organizations"

_STYLE = """
:root{color-scheme:light dark;--card:#f4f5f7;--ink:#1d2430;--mute:#5b6473;--line:#d9dde3}
@media (prefers-color-scheme:dark){:root{--card:#1f242c;--ink:#e8eaed;--mute:#a3abb7;
--line:#363c46}}
*{box-sizing:border-box}
body{margin:0;font:16px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--ink)}
header,main,form{max-width:1100px;margin:0 auto;padding:12px 16px}
h1{font-size:1.4rem;margin:8px 0 2px}h2{font-size:1.2rem;margin:4px 0 12px}
.meta{color:var(--mute);margin:0;font-size:.9rem}
form{display:flex;flex-wrap:wrap;gap:8px;align-items:center}
form input,form select,form button{font:inherit;padding:6px 8px;min-width:0}
form input{flex:1 1 200px}form select{flex:2 1 260px}
.row{display:grid;gap:12px;margin-bottom:12px}
.top{grid-template-columns:repeat(4,1fr)}.bottom,.ratios{grid-template-columns:repeat(2,1fr)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px}
.card h3{margin:0;font-size:.95rem;font-weight:600;color:var(--mute)}
.value{font-size:2rem;font-weight:700;margin:4px 0 0;font-variant-numeric:tabular-nums}
.detail{margin:2px 0 0;color:var(--mute);font-size:.9rem}
.ratios .value{font-size:1.5rem}
@media (max-width:760px){.top{grid-template-columns:repeat(2,1fr)}}
@media (max-width:330px){.top,.bottom,.ratios{grid-template-columns:1fr}}
"""

_SCRIPT = """
(function(){var q=document.getElementById('q'),s=document.getElementById('org');
if(!q||!s)return;
q.addEventListener('input',function(){var t=q.value.toLowerCase(),first=null;
for(var i=0;i<s.options.length;i++){var o=s.options[i],hit=o.text.toLowerCase().indexOf(t)>=0;
o.hidden=!hit;if(hit&&first===null)first=o;}if(first&&s.selectedOptions[0].hidden){
first.selected=true;}});
q.addEventListener('keydown',function(e){if(e.key==='Enter'){e.preventDefault();
s.form.submit();}});
s.addEventListener('change',function(){s.form.submit();});})();
"""


@dataclass(frozen=True)
class Page:
    status: int
    body: bytes


class OrgPage:
    """Renders the page; the organizations' cards are worked out once per snapshot."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._for: Snapshot | None = None
        self._cards: list[OrgCards] = []
        self._options = ""

    def _of(self, specs: Specs, snapshot: Snapshot) -> tuple[list[OrgCards], str]:
        with self._lock:
            if self._for is not snapshot:
                cards = organization_cards(specs, snapshot)
                options = "".join(
                    f'<option value="{escape(c.org)}">{escape(c.name)} ({escape(c.org)})</option>'
                    for c in cards
                )
                self._for, self._cards, self._options = snapshot, cards, options
            return self._cards, self._options

    def render(self, specs: Specs, snapshot: Snapshot, org: str | None) -> Page:
        cards, options = self._of(specs, snapshot)
        if not cards:
            why = "No organizations yet." if snapshot.taken_at else "No collection yet."
            return Page(503, _document("", f"<p>{why}</p>", snapshot))
        chosen = next((c for c in cards if c.org == org), None) if org is not None else cards[0]
        if chosen is None:
            body = f"<p>No organization with id {escape(org or '')}.</p>"
            return Page(404, _document(options, body, snapshot))
        selected = f'value="{escape(chosen.org)}"'
        picked = options.replace(selected, selected + " selected", 1)
        return Page(200, _document(picked, _cards(chosen), snapshot))


def _card(key: str, title: str, value: str, detail: str = "") -> str:
    extra = f'<p class="detail">{detail}</p>' if detail else ""
    return (
        f'<section class="card" data-card="{key}"><h3>{title}</h3>'
        f'<p class="value">{value}</p>{extra}</section>'
    )


def _cards(c: OrgCards) -> str:
    agents = f"{number(c.agents_active)} active · {number(c.agents_disabled)} disabled"
    return (
        f'<h2 id="org-name" data-org="{escape(c.org)}">{escape(c.name)}</h2>'
        '<div class="row top">'
        + _card("bots", "Bots", number(c.bots))
        + _card("agents", "Agents", number(c.agents), agents)
        + _card("flows", "Flows", number(c.flows))
        + _card("users", "Users", number(c.users))
        + '</div><div class="row bottom">'
        + _card("inbound", "Inbound Messages", number(c.inbound), day(c.inbound_since))
        + _card("outbound", "Outbound Messages", number(c.outbound), day(c.outbound_since))
        + '</div><div class="row ratios">'
        + _card("users_per_active_agent", "Users per active agent", ratio(c.users_per_active_agent))
        + _card(
            "outbound_per_inbound",
            "Outbound per inbound",
            ratio(c.outbound_per_inbound),
            "since counting began",
        )
        + "</div>"
    )


def _document(options: str, main: str, snapshot: Snapshot) -> bytes:
    taken = (
        dt.datetime.fromtimestamp(snapshot.taken_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if snapshot.taken_at
        else "never"
    )
    picker = (
        f'<form method="get" action="{PATH}"><label for="q">Organization</label>'
        '<input id="q" type="search" placeholder="Search" autocomplete="off">'
        f'<select id="org" name="org">{options}</select><button type="submit">Show</button>'
        "</form>"
        if options
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Organization Metrics · convrs-exporter</title>"
        f"<style>{_STYLE}</style></head><body><header><h1>Organization Metrics</h1>"
        f'<p class="meta">As /metrics serves them, collected {taken} · '
        '<a href="/">convrs-exporter</a></p></header>'
        f"{picker}<main>{main}</main><script>{_SCRIPT}</script></body></html>\n"
    ).encode()
