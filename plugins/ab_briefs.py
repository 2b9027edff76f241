"""The decision-brief archive inside Airflow: an api-server plugin plus a navigation link.

Serves, from the briefs archive (`<briefs root>/<experiment>/<run date>/`, see
`ab_pipeline.pipeline.briefs_root`):

- `/ab-briefs/`                                    experiments with their latest decision
- `/ab-briefs/{experiment}/`                       every readout of one experiment
- `/ab-briefs/{experiment}/{run_date}/brief.html`  the archived (self-contained) brief
- `/ab-briefs/{experiment}/{run_date}/results.json`

Only callers authenticated to Airflow get an answer: every route depends on Airflow's own
`get_user` (the api-server's auth manager validates the JWT from the `Authorization: Bearer`
header or the UI's session cookie), so there is no second login and no second user list.
Pages are built with autoescaping and served with a CSP that forbids scripts: an archived brief
is shown as it was rendered, and hostile text in it stays text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import Environment
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

URL_PREFIX = "/ab-briefs"
EXPERIMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
RUN_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# No scripts at all, images only inline (the briefs' charts), styles only inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"


async def require_airflow_user(request: Request) -> Any:
    """Airflow's own authentication: 401/403 unless the request carries a valid Airflow JWT."""
    # Imported here: the plugin module is also loaded by the scheduler and workers.
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPBearer

    credentials = await HTTPBearer(auto_error=False)(request)
    return await get_user(request, None, credentials)


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response


def briefs_root() -> Path:
    from ab_pipeline.pipeline import briefs_root as root

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
    """Every run of one experiment, newest first, with its decision when results.json says."""
    runs = []
    for path in sorted(experiment_dir.iterdir(), reverse=True):
        if not (path.is_dir() and RUN_DATE.fullmatch(path.name)):
            continue
        results = read_results(path / "results.json")
        runs.append(
            {
                "run_date": path.name,
                "decision": results.get("decision", "?"),
                "status": results.get("status", ""),
                "reason": results.get("decision_reason", ""),
                "title": results.get("title", ""),
                "has_brief": (path / "brief.html").is_file(),
                "has_results": bool(results),
            }
        )
    return runs


def read_results(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
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


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title></head>
<body style="margin:0;background:#f6f8fa;font-family:-apple-system,'Segoe UI',Helvetica,Arial,\
sans-serif;font-size:14px;color:#1f2328;">
<div style="max-width:960px;margin:0 auto;padding:24px;background:#fff;">
<h1 style="font-size:20px;margin:0 0 12px;">{{ title }}</h1>
{% if back %}<p><a href="{{ back }}">&larr; all experiments</a></p>{% endif %}
<table style="border-collapse:collapse;width:100%;">
<tr>{% for h in headers %}<th style="text-align:left;padding:6px 8px;border-bottom:1px solid \
#d0d7de;background:#f6f8fa;">{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row %}<td style="padding:6px 8px;border-bottom:1px solid \
#d0d7de;vertical-align:top;">{% if cell.href %}<a href="{{ cell.href }}">{{ cell.text }}</a>\
{% else %}{{ cell.text }}{% endif %}</td>{% endfor %}</tr>
{% else %}<tr><td colspan="{{ headers | length }}" style="padding:6px 8px;color:#57606a;">\
No briefs yet.</td></tr>{% endfor %}
</table>
<p style="font-size:12px;color:#57606a;">Archive: {{ root }}</p>
</div></body></html>
"""
_PAGE = Environment(autoescape=True).from_string(PAGE)


def cell(text: Any, href: str | None = None) -> dict[str, Any]:
    return {"text": str(text), "href": href}


def page(title: str, headers: list[str], rows: list[list[dict[str, Any]]], back: str = "") -> str:
    return _PAGE.render(title=title, headers=headers, rows=rows, back=back, root=briefs_root())


def links(prefix: str, run: dict[str, Any]) -> list[dict[str, Any]]:
    # Relative links: they work wherever the api-server is mounted (base_url, proxies).
    base = f"{prefix}{run['run_date']}"
    return [
        cell("brief", f"{base}/brief.html") if run["has_brief"] else cell("no brief"),
        cell("results.json", f"{base}/results.json") if run["has_results"] else cell("-"),
    ]


app = FastAPI(
    title="ab-pipeline decision briefs",
    dependencies=[Depends(require_airflow_user)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
app.add_middleware(SecurityHeaders)


@app.get("/", response_class=HTMLResponse)
def index() -> str:
    rows = [
        [
            cell(e["experiment"], f"{e['experiment']}/"),
            cell(e["latest"]["title"]),
            cell(e["latest"]["decision"]),
            cell(f"{e['latest']['run_date']} ({e['latest']['status']})"),
            cell(e["count"]),
            *links(f"{e['experiment']}/", e["latest"]),
        ]
        for e in experiments()
    ]
    headers = ["Experiment", "Title", "Latest decision", "Readout", "Readouts", "Brief", "Data"]
    return page("Decision briefs", headers, rows)


@app.get("/{experiment}/", response_class=HTMLResponse)
def experiment_page(experiment: str) -> str:
    if not EXPERIMENT.fullmatch(experiment) or not (briefs_root() / experiment).is_dir():
        raise HTTPException(status_code=404, detail="no such experiment")
    rows = [
        [
            cell(r["run_date"]),
            cell(r["decision"]),
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
