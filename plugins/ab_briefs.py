"""The decision-brief archive inside Airflow: an api-server plugin plus a navigation link.

Serves, from the briefs archive (`<briefs root>/<experiment>/<run date>/`, see
`ab_pipeline.orchestration.pipeline.briefs_root`):

- `/ab-briefs/`                                    the portfolio: every experiment's latest
  decision, status, days left, primary estimate and owner; `?decision=` and `?owner=` filter it
- `/ab-briefs/{experiment}/`                       every readout of one experiment
- `/ab-briefs/{experiment}/{run_date}/brief.html`  the archived (self-contained) brief
- `/ab-briefs/{experiment}/{run_date}/results.json`

Only callers authenticated to Airflow get an answer: every route depends on Airflow's own
`get_user` (the api-server's auth manager validates the JWT from the `Authorization: Bearer`
header or the UI's session cookie), so there is no second login and no second user list. A
browser without a valid session is redirected to Airflow's login with `next` pointing back; a
request that sent an `Authorization` header (an API client) gets the plain 401/403 instead.
Pages are built with autoescaping and served with a CSP that forbids scripts: an archived brief
is shown as it was rendered, and hostile text in it stays text. No page names a server path.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

log = logging.getLogger(__name__)
URL_PREFIX = "/ab-briefs"
EXPERIMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
RUN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# No scripts at all, images only inline (the briefs' charts), styles only inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
# Airflow's public login route: it checks `next` and hands over to the auth manager's login.
LOGIN_ROUTE = "/api/v2/auth/login"
# The portfolio's order: what needs someone's attention first.
DECISION_ORDER = ("RERUN", "STOP", "SHIP", "ITERATE", "CONTINUE")
STATUS_MEANING = {
    "RERUN": "a validity gate failed: nothing was analysed",
    "final": "the readout at or after the planned end",
    "running": "before the planned end; nightly interim readouts",
    "interim": "the planned end has passed but the latest readout is an interim one",
}


class LoginRequired(Exception):
    """A browser without a valid Airflow session: answered with a redirect to the login."""


async def require_airflow_user(request: Request) -> Any:
    """Airflow's own authentication: the user, else a login redirect (browser) or 401/403."""
    # Imported here: the plugin module is also loaded by the scheduler and workers.
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPBearer

    credentials = await HTTPBearer(auto_error=False)(request)
    try:
        return await get_user(request, None, credentials)
    except HTTPException as refused:
        # An API client that sent credentials wants the status; a browser wants the login.
        if "authorization" in request.headers or refused.status_code not in (401, 403):
            raise
        raise LoginRequired() from refused


def login_url(request: Request) -> str:
    """Airflow's login URL with `next` = this page, both as paths (safe behind a proxy)."""
    # The app is mounted at <airflow root>/ab-briefs; root_path carries both parts.
    mounted_at = request.scope.get("root_path", "")
    airflow_root = mounted_at.removesuffix(URL_PREFIX)
    # Starlette keeps the mount point in `path` (newer versions) or only in `root_path`.
    page = request.scope.get("path", "/")
    if not page.startswith(mounted_at + "/"):
        page = mounted_at + page
    if request.url.query:
        page += "?" + request.url.query
    return f"{airflow_root}{LOGIN_ROUTE}?{urlencode({'next': page})}"


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response


def briefs_root() -> Path:
    from ab_pipeline.orchestration.pipeline import briefs_root as root

    return root()


def run_dir(experiment: str, run_date: str) -> Path:
    """The run directory, or 404: names are checked before they touch the filesystem."""
    if not EXPERIMENT.fullmatch(experiment) or not RUN_DATE.fullmatch(run_date):
        raise HTTPException(status_code=404, detail="no such brief")
    path = briefs_root() / experiment / run_date
    if not path.is_dir():
        raise HTTPException(status_code=404, detail="no such brief")
    return path


def readouts(experiment_dir: Path) -> list[dict[str, Any]]:
    """Every run of one experiment, newest first, with its results.json (`{}` when unreadable)."""
    runs = []
    for path in sorted(experiment_dir.iterdir(), reverse=True):
        if not (path.is_dir() and RUN_DATE.fullmatch(path.name)):
            continue
        results = read_results(path / "results.json")
        runs.append(
            {
                "run_date": path.name,
                "decision": str(results.get("decision", "?")),
                "status": str(results.get("status", "")),
                "reason": results.get("decision_reason", ""),
                "title": results.get("title", ""),
                "has_brief": (path / "brief.html").is_file(),
                "has_results": bool(results),
                "results": results,
            }
        )
    return runs


def read_results(path: Path) -> dict[str, Any]:
    """results.json through its contract (ab_pipeline.readout.results_model); one the contract
    refuses
    (a hand edit) is logged and shown as far as it goes, one that is not JSON is `{}`."""
    from ab_pipeline.readout.results_model import ResultsInvalid, load_results

    try:
        return load_results(path)
    except ResultsInvalid as error:
        log.warning("%s", error)
    except (OSError, ValueError):
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def experiments() -> list[dict[str, Any]]:
    root = briefs_root()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if path.is_dir() and EXPERIMENT.fullmatch(path.name) and (runs := readouts(path)):
            found.append({"experiment": path.name, "latest": runs[0], "count": len(runs)})
    return found


# ---- the portfolio row ------------------------------------------------------------------------


def today() -> date:
    return datetime.now(UTC).date()


def parse_date(value: Any) -> date | None:
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def portfolio_status(latest: dict[str, Any], end: date | None, on: date) -> str:
    if latest["decision"] == "RERUN":
        return "RERUN"
    if latest["status"] == "final":
        return "final"
    return "running" if end is not None and on <= end else "interim"


def days_left(end: date | None, on: date) -> str:
    if end is None:
        return "—"
    left = (end - on).days
    if left < 0:
        return f"ended {end.isoformat()}"
    if left == 0:
        return "ends today"
    return f"{left} day" + ("" if left == 1 else "s")


def primary_estimates(results: dict[str, Any]) -> dict[str, Any] | None:
    """The primary metric's latest estimate per treatment arm, formatted as in the brief."""
    from ab_pipeline.report.brief import fmt_diff, fmt_interval, fmt_pct, fmt_rel_interval

    metrics = results.get("metrics")
    if not isinstance(metrics, dict):
        return None
    name = next((n for n, m in metrics.items() if _get(m, "role") == "primary"), None)
    comparisons = _get(metrics.get(name), "comparisons")
    if name is None or not isinstance(comparisons, dict):
        return None
    kind = _get(metrics[name], "type")
    try:
        rows = [
            {
                "arm": arm,
                "absolute": fmt_diff(c.get("absolute"), kind),
                "ci": fmt_interval(c.get("ci"), kind),
                "relative": fmt_pct(c.get("relative"), signed=True),
                "relative_ci": fmt_rel_interval(c.get("relative_ci")),
            }
            for arm, c in sorted(comparisons.items())
        ]
    except (AttributeError, TypeError, ValueError):
        return None  # a hand-edited results.json costs its estimate, not the whole page
    return {"metric": name, "rows": rows} if rows else None


def owner_decision(results: dict[str, Any]) -> dict[str, Any] | None:
    """The owner's latest recorded decision (`ab-pipeline decide`), if any."""
    records = results.get("human_decisions")
    latest = records[-1] if isinstance(records, list) and records else None
    if not isinstance(latest, dict) or not latest.get("decision"):
        return None
    return {
        "decision": str(latest["decision"]).upper(),
        "by": str(latest.get("by", "")),
        "note": str(latest.get("note", "")),
        "disagrees": bool(latest.get("disagrees")),
    }


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def portfolio_row(entry: dict[str, Any], on: date) -> dict[str, Any]:
    latest, results = entry["latest"], entry["latest"]["results"]
    end = parse_date(results.get("end"))
    return {
        "experiment": entry["experiment"],
        "title": str(results.get("title", "")),
        "decision": latest["decision"],
        "reason": str(latest["reason"]),
        "status": portfolio_status(latest, end, on),
        "days_left": days_left(end, on),
        "estimate": primary_estimates(results),
        "owner_decision": owner_decision(results),
        "owner": str(results.get("owner", "")),
        "run_date": latest["run_date"],
        "count": entry["count"],
        "brief": f"{entry['experiment']}/{latest['run_date']}/brief.html"
        if latest["has_brief"]
        else None,
        "results": f"{entry['experiment']}/{latest['run_date']}/results.json"
        if latest["has_results"]
        else None,
    }


def attention_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What needs someone's attention first (DECISION_ORDER), newest readout first within."""
    by_date = sorted(rows, key=lambda row: (row["run_date"], row["experiment"]), reverse=True)
    rank = {decision: i for i, decision in enumerate(DECISION_ORDER)}
    return sorted(by_date, key=lambda row: rank.get(row["decision"], len(rank)))


def filter_link(decision: str | None, owner: str | None) -> str:
    params = {k: v for k, v in (("decision", decision), ("owner", owner)) if v}
    return "?" + urlencode(params) if params else "./"


def decision_color(decision: str) -> str:
    from ab_pipeline.report.brief import DECISIONS

    return DECISIONS.get(decision, ("#57606a", ""))[0]


STYLE = """<style>
body{margin:0;background:#f6f8fa;font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;
font-size:14px;color:#1f2328}
main{max-width:1280px;margin:0 auto;padding:20px;background:#fff;box-sizing:border-box}
h1{font-size:20px;margin:0 0 4px}
.sub{color:#57606a;margin:0 0 12px}
.chips a{display:inline-block;margin:0 6px 6px 0;padding:3px 10px;border-radius:12px;
border:1px solid #d0d7de;color:#1f2328;text-decoration:none;white-space:nowrap}
.chips a.on{border-color:#1f2328;font-weight:600}
form{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-end;margin:4px 0 12px}
label{display:flex;flex-direction:column;font-size:12px;color:#57606a;max-width:100%}
select{font-size:14px;padding:4px;max-width:100%}
button{font-size:14px;padding:4px 12px}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid #d0d7de;border-radius:6px}
table{border-collapse:collapse;width:100%}
th{text-align:left;padding:6px 8px;border-bottom:1px solid #d0d7de;background:#f6f8fa;
white-space:nowrap}
td{padding:6px 8px;border-bottom:1px solid #d0d7de;vertical-align:top}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;font-weight:600;
font-size:12px}
.muted{color:#57606a;font-size:12px}
.num{font-variant-numeric:tabular-nums}
.nowrap{white-space:nowrap}
.legend{font-size:12px;color:#57606a;margin-top:12px}
@media (max-width:600px){main{padding:12px}h1{font-size:18px}}
/* A phone gets one card per experiment instead of a table to scroll sideways. */
@media (max-width:700px){#portfolio,#portfolio tbody,#portfolio tr,#portfolio td{display:block}
#portfolio tr.head{display:none}#portfolio tr{padding:6px 0;border-bottom:1px solid #d0d7de}
#portfolio td{border:0;padding:2px 10px}
#portfolio td[data-label]::before{content:attr(data-label) ": ";color:#57606a;font-size:12px}}
</style>"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>{{ style | safe }}</head>
<body><main>
<h1>{{ title }}</h1>
{% if back %}<p><a href="{{ back }}">&larr; all experiments</a></p>{% endif %}
<div class="scroll"><table>
<tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row %}<td{% if cell.color %} style="color:\
{{ cell.color }};font-weight:600"{% endif %}>{% if cell.href %}<a href="{{ cell.href }}">\
{{ cell.text }}</a>{% else %}{{ cell.text }}{% endif %}</td>{% endfor %}</tr>
{% else %}<tr><td colspan="{{ headers | length }}" class="muted">No briefs yet.</td></tr>\
{% endfor %}
</table></div>
</main></body></html>
"""

PORTFOLIO = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Experiments: latest decisions</title>{{ style | safe }}</head>
<body><main>
<h1>Experiments: latest decisions</h1>
<p class="sub">{{ total }} experiment{{ "" if total == 1 else "s" }} in the archive, as of \
{{ today }}; what needs attention first (RERUN, STOP, SHIP, ITERATE, CONTINUE).</p>
<nav class="chips" aria-label="Filter by decision">
<a href="{{ all_link }}"{% if not decision %} class="on"{% endif %}>All {{ owner_total }}</a>
{% for chip in chips %}<a href="{{ chip.href }}" style="color:{{ chip.color }}"\
{% if chip.on %} class="on"{% endif %}>{{ chip.decision }} {{ chip.count }}</a>
{% endfor %}</nav>
<form method="get" action="./">
<label>Decision<select name="decision"><option value="">any</option>
{% for d in decisions %}<option value="{{ d }}"{% if d == decision %} selected{% endif %}>\
{{ d }}</option>{% endfor %}</select></label>
<label>Owner<select name="owner"><option value="">anyone</option>
{% for o in owners %}<option value="{{ o }}"{% if o == owner %} selected{% endif %}>{{ o }}\
</option>{% endfor %}</select></label>
<button type="submit">Filter</button>{% if decision or owner %} <a href="./">clear</a>{% endif %}
</form>
<div class="scroll"><table id="portfolio">
<tr class="head"><th>Experiment</th><th>Decision</th><th>Status</th><th>Days left</th>\
<th>Primary: latest estimate [interval]</th><th>Owner</th><th>Latest readout</th></tr>
{% for r in rows %}<tr data-experiment="{{ r.experiment }}">
<td><a href="{{ r.experiment }}/">{{ r.experiment }}</a><br><span class="muted">{{ r.title }}\
</span></td>
<td><span class="badge" style="background:{{ r.color }}" title="{{ r.reason }}">\
{{ r.decision }}</span>{% if r.owner_decision %}<br><span class="muted" \
title="{{ r.owner_decision.note }}">{{ r.owner_decision.by }} decided \
{{ r.owner_decision.decision }}{% if r.owner_decision.disagrees %} (differs){% endif %}\
</span>{% endif %}</td>
<td data-label="Status" title="{{ status_meaning.get(r.status, '') }}">{{ r.status }}</td>
<td class="num" data-label="Days left">{{ r.days_left }}</td>
<td data-label="Primary">{% if r.estimate %}<span class="muted">{{ r.estimate.metric }}</span>\
{% for e in r.estimate.rows %}<br><span class="num">{{ e.arm }}: <b class="nowrap">\
{{ e.absolute }}</b> <span class="nowrap">{{ e.ci }}</span></span> <span class="num muted \
nowrap">{{ e.relative }} {{ e.relative_ci }}</span>\
{% endfor %}{% else %}<span class="muted">no estimate{% if r.decision == "RERUN" %} \
(gate failed){% endif %}</span>{% endif %}</td>
<td data-label="Owner">{{ r.owner }}</td>
<td data-label="Latest readout"><span class="num nowrap">{{ r.run_date }}</span><br>\
{% if r.brief %}<a href="{{ r.brief }}">brief</a>{% else %}<span class="muted">no brief</span>\
{% endif %} · \
{% if r.results %}<a href="{{ r.results }}">results.json</a>{% else %}<span class="muted">\
no results</span>{% endif %}<br><a href="{{ r.experiment }}/">{{ r.count }} readout\
{{ "" if r.count == 1 else "s" }}</a></td>
</tr>
{% else %}<tr><td colspan="7" class="muted">{% if total %}No experiment matches these \
filters.{% else %}No briefs yet.{% endif %}</td></tr>{% endfor %}
</table></div>
<p class="legend">Status: {% for s, meaning in status_meaning.items() %}<b>{{ s }}</b> \
{{ meaning }}{{ "; " if not loop.last else "." }}{% endfor %} Days left count to the \
experiment's planned end. Hover a decision for its reason; under it, the owner's recorded \
decision (<code>ab-pipeline decide</code>) when there is one.</p>
</main></body></html>
"""
_ENV = Environment(autoescape=True)
_PAGE = _ENV.from_string(PAGE)
_PORTFOLIO = _ENV.from_string(PORTFOLIO)


def cell(text: Any, href: str | None = None, color: str | None = None) -> dict[str, Any]:
    return {"text": str(text), "href": href, "color": color}


def page(title: str, headers: list[str], rows: list[list[dict[str, Any]]], back: str = "") -> str:
    return _PAGE.render(title=title, headers=headers, rows=rows, back=back, style=STYLE)


def links(prefix: str, run: dict[str, Any]) -> list[dict[str, Any]]:
    # Relative links: they work wherever the api-server is mounted (base_url, proxies).
    base = f"{prefix}{run['run_date']}"
    return [
        cell("brief", f"{base}/brief.html") if run["has_brief"] else cell("no brief"),
        cell("results.json", f"{base}/results.json") if run["has_results"] else cell("-"),
    ]


def portfolio_page(decision: str | None, owner: str | None) -> str:
    """The index: every experiment's latest readout, filtered server-side."""
    on = today()
    rows = [portfolio_row(entry, on) for entry in experiments()]
    for row in rows:
        row["color"] = decision_color(row["decision"])
    owners_rows = [r for r in rows if not owner or r["owner"] == owner]
    shown = attention_order([r for r in owners_rows if not decision or r["decision"] == decision])
    present = {r["decision"] for r in rows}
    decisions = [d for d in DECISION_ORDER if d in present] + sorted(present - set(DECISION_ORDER))
    chips = [
        {
            "decision": d,
            "count": sum(r["decision"] == d for r in owners_rows),
            "href": filter_link(d, owner),
            "color": decision_color(d),
            "on": d == decision,
        }
        for d in decisions
    ]
    return _PORTFOLIO.render(
        style=STYLE,
        rows=shown,
        total=len(rows),
        owner_total=len(owners_rows),
        today=on.isoformat(),
        decision=decision,
        owner=owner,
        decisions=decisions,
        owners=sorted({r["owner"] for r in rows if r["owner"]}),
        chips=chips,
        all_link=filter_link(None, owner),
        status_meaning=STATUS_MEANING,
    )


app = FastAPI(
    title="ab-pipeline decision briefs",
    dependencies=[Depends(require_airflow_user)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
app.add_middleware(SecurityHeaders)


@app.exception_handler(LoginRequired)
async def to_login(request: Request, _: LoginRequired) -> RedirectResponse:
    return RedirectResponse(login_url(request), status_code=303)


@app.get("/", response_class=HTMLResponse)
def index(decision: str | None = None, owner: str | None = None) -> str:
    return portfolio_page(decision.strip().upper() if decision else None, owner or None)


@app.get("/{experiment}/", response_class=HTMLResponse)
def experiment_page(experiment: str) -> str:
    if not EXPERIMENT.fullmatch(experiment) or not (briefs_root() / experiment).is_dir():
        raise HTTPException(status_code=404, detail="no such experiment")
    rows = [
        [
            cell(r["run_date"]),
            cell(r["decision"], color=decision_color(r["decision"])),
            cell(r["status"]),
            cell(r["reason"]),
            *links("", r),
        ]
        for r in readouts(briefs_root() / experiment)
    ]
    headers = ["Readout", "Decision", "Status", "Why", "Brief", "Data"]
    return page(f"Decision briefs: {experiment}", headers, rows, back="../")


@app.get("/{experiment}/{run_date}/brief.html", response_class=HTMLResponse)
def brief(experiment: str, run_date: str) -> HTMLResponse:
    path = run_dir(experiment, run_date) / "brief.html"
    if not path.is_file():
        raise HTTPException(status_code=404, detail="no brief for this run")
    return HTMLResponse(path.read_text(encoding="utf-8"))


@app.get("/{experiment}/{run_date}/results.json")
def results(experiment: str, run_date: str) -> JSONResponse:
    path = run_dir(experiment, run_date) / "results.json"
    data = read_results(path)
    if not data:
        raise HTTPException(status_code=404, detail="no results.json for this run")
    return JSONResponse(data)


class ABBriefsPlugin(AirflowPlugin):
    name = "ab_briefs"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Decision briefs"}]
    # A link in Airflow's navigation (Browse menu); the UI shows the page in its frame.
    external_views = [
        {
            "name": "Decision briefs",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "ab-briefs",
        }
    ]
