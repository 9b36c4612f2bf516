"""Policy: the published rules, their difference to server.toml, a try-out on recorded
traffic, publishing (admins), and which config version each gate runs.

Everyone logged in reads the page and may run the try-out (it changes nothing);
only an admin publishes. The publish form carries the digest of the candidate the
admin saw, so an edit of server.toml after the page was loaded is not published
unseen. The try-out is the injected `PolicyTrial` (the gates' decision core); it
replays at most `TRIAL_MAX_EVENTS` decisions, one try-out at a time.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from protocol.errors import ProtocolError
from protocol.policy import Policy
from server.config import ServerConfigError
from server.policy_rollout import (
    TRIAL_DAYS,
    CandidateChanged,
    NothingToPublish,
    TrialRequest,
    TrialResult,
    policy_diff,
    policy_digest,
    policy_values,
)
from server.web.accounts import Session
from server.web.auth import checked_form, require
from server.web.dashboard import Dashboard, dashboard_of
from server.web.views.overview import gate_rows

TRIAL_MAX_EVENTS = 20_000
"""The dashboard's try-out replays at most this many decisions (the command line: more)."""
DONE = ("published", "unchanged")


def routes() -> list[Route]:
    return [
        Route("/policy", policy_page),
        Route("/policy/try", try_out, methods=["POST"]),
        Route("/policy/publish", publish, methods=["POST"]),
    ]


def _candidate(d: Dashboard) -> tuple[Policy | None, str | None]:
    """server.toml's [policy] as the file says now, or the error that stops it."""
    try:
        return d.site.candidate_policy(), None
    except ServerConfigError as exc:
        return None, str(exc)


def rollout(d: Dashboard, version: int) -> dict[str, Any]:
    """Each gate's config version (from its retained status) against the published one."""
    gates = gate_rows(d)
    for g in gates:
        g["current"] = g["config"] == version
    return {
        "gates": gates,
        "current": sum(1 for g in gates if g["current"]),
        "total": len(gates),
    }


def _render(
    request: Request,
    session: Session,
    *,
    trial: TrialResult | None = None,
    since: date | None = None,
    status: int = 200,
) -> Response:
    d = dashboard_of(request)
    published = d.site.published_policy()
    candidate, error = _candidate(d)
    changes = [] if candidate is None else policy_diff(published.policy, candidate)
    values = policy_values(published.policy)
    default_since = datetime.now(d.site.config.tz).date() - timedelta(days=TRIAL_DAYS)
    return d.pages.render(
        request,
        "policy.html",
        session,
        status=status,
        published=published,
        issued_at=published.issued_at.isoformat(),
        values=values,
        changed_keys={c.key for c in changes},
        changes=changes,
        candidate_error=error,
        digest=None if candidate is None else policy_digest(candidate),
        rollout=rollout(d, published.version),
        trial_available=d.trial is not None,
        trial=trial,
        since=(since or default_since).isoformat(),
        done=request.query_params.get("done") if request.query_params.get("done") in DONE else None,
    )


def policy_page(request: Request) -> Response:
    return _render(request, require(request))


async def try_out(request: Request) -> Response:
    """Replay recorded traffic under the published policy and server.toml's candidate."""
    session, form = await checked_form(request, "viewer")
    d = dashboard_of(request)
    if d.trial is None:
        raise HTTPException(503, "policy.try_unavailable")
    try:
        since = date.fromisoformat(str(form.get("since", "")).strip())
    except ValueError:
        raise HTTPException(400, "policy.bad_since") from None
    candidate, error = _candidate(d)
    if candidate is None:
        raise HTTPException(400, error)
    start = datetime.combine(since, datetime.min.time(), d.site.config.tz)
    trial = d.trial

    def run() -> TrialResult:
        with d.trial_lock:
            return trial(d.site, TrialRequest(candidate, start, TRIAL_MAX_EVENTS))

    try:
        result = await run_in_threadpool(run)
    except (ProtocolError, OSError) as exc:
        raise HTTPException(500, f"{exc}") from None
    return _render(request, session, trial=result, since=since)


async def publish(request: Request) -> Response:
    """Sign server.toml's [policy] as the next config version (admins); audited by name."""
    session, form = await checked_form(request, "admin")
    d = dashboard_of(request)
    digest = str(form.get("digest", ""))

    def apply() -> None:
        d.site.publish_policy(session.operator.name, expect_digest=digest)

    try:
        await run_in_threadpool(apply)
    except NothingToPublish:
        return RedirectResponse("/policy?done=unchanged", status_code=303)
    except CandidateChanged:
        raise HTTPException(409, "policy.candidate_changed") from None
    except ProtocolError as exc:
        raise HTTPException(400, str(exc)) from None
    return RedirectResponse("/policy?done=published", status_code=303)
