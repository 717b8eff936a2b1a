"""`report --notify URL`: the report's alerts POSTed as JSON, for a chat webhook, a pager, a
ticketing bridge. Standard library only (urllib): one request, a timeout, and an error that
names the URL and what went wrong, so an alarm nobody received does not pass silently.

The body:
    {"output": OUTPUT_URI, "generated_at": ..., "watch_label": "negative", "alerts": [{"task", "column", "watch_label",
     "segment": null | {"column", "value"}, "period", "rows", "watched", "share",
     "baseline", "baseline_rows", "jump", "alert"}, ...]}
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 10.0


class NotifyError(Exception):
    """The notification could not be delivered (or the URL cannot be used); names the URL."""


def check_url(url: str) -> None:
    """Before any work: only http(s) URLs with a host are accepted."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise NotifyError(f"--notify {url}: expected an http:// or https:// URL")


def payload(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "output": report["output_uri"],
        "generated_at": report["generated_at"],
        "watch_label": report["watch_label"],
        "alerts": report["alerts"],
    }


def post_alerts(url: str, report: dict[str, Any], timeout: float = TIMEOUT_SECONDS) -> int:
    """POST the alerts; the HTTP status on success (2xx), NotifyError otherwise."""
    body = json.dumps(payload(report), ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        raise NotifyError(f"--notify {url}: the server answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotifyError(f"--notify {url}: could not POST the alerts: {reason}") from None
