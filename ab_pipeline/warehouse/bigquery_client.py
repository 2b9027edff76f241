"""google-cloud-bigquery's client for a `bigquery://PROJECT[/DATASET]?...` warehouse URL: one per
process and URL, shared by the pipeline's own statements (`dialects.bigquery`) and Great
Expectations' engine (`sa_bigquery`). See `dialects.bigquery` for the URL's settings."""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import parse_qsl, urlsplit

_LOCK = threading.Lock()
_CLIENTS: dict[tuple[int, str], Any] = {}  # (pid, url) -> bigquery.Client


def bigquery_target(url: str) -> tuple[str, str | None, dict[str, str]]:
    """(project, default dataset or None, query settings) of `bigquery://PROJECT[/DATASET]?...`."""
    parts = urlsplit(url)
    dataset = parts.path.strip("/") or None
    if not parts.netloc or (dataset and "/" in dataset):
        raise ValueError("a BigQuery warehouse URL is bigquery://PROJECT[/DATASET]")
    return parts.netloc, dataset, dict(parse_qsl(parts.query))


def bigquery_client(url: str) -> Any:
    """This process's client for `url` (created on first use)."""
    key = (os.getpid(), url)
    with _LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = _new_client(url)
        return _CLIENTS[key]


def _new_client(url: str) -> Any:
    from google.cloud.bigquery import Client

    project, _, settings = bigquery_target(url)
    endpoint = settings.get("api_endpoint")
    options: dict[str, Any] = {}
    if endpoint:
        from google.api_core.client_options import ClientOptions

        options["client_options"] = ClientOptions(api_endpoint=endpoint)
        if endpoint.startswith("http://"):  # a local emulator: no Google credentials
            from google.auth.credentials import AnonymousCredentials

            options["credentials"] = AnonymousCredentials()
    return Client(project=project, location=settings.get("location"), **options)
