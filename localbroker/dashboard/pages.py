"""Request handlers: each gathers its data through :mod:`.queries` and renders a template."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from markupsafe import escape
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from localbroker.broker.positions import ARCHIVE_STATE_KEY
from localbroker.dashboard.live import live_fragments
from localbroker.dashboard.queries import (
    RANGES,
    event_detail,
    list_events,
    parse_time,
    sync_rows,
    topic_analytics,
    topic_stats,
    window_start,
)
from localbroker.dashboard.security import CSRF_FIELD, csrf_token, csrf_valid
from localbroker.dashboard.svg import bar_chart, chain_svg, segment
from localbroker.errors import ConfigurationError, LocalBrokerError, NotFoundError
from localbroker.state.coordination import read_processes
from localbroker.state.event_index import EventQuery

if TYPE_CHECKING:
    from localbroker.dashboard.app import Dashboard

__all__ = ["render"]

DLQ_STATUSES = {
    "open": ("dead", "retrying"),
    "dead": ("dead",),
    "retrying": ("retrying",),
    "resolved": ("resolved",),
    "discarded": ("discarded",),
    "all": ("dead", "retrying", "resolved", "discarded"),
}

Context = dict[str, Any]

CHAIN_DRAWN = 500
"""Events of a chain drawn at most (the table under the drawing lists them all)."""


def _dash(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, name: str, context: Context, *, status_code: int = 200) -> Response:
    """A full page: ``context`` plus what every page uses (base path, CSRF token, nav)."""
    full = {"base": _base(request), "csrf": csrf_token(request), **context}
    return request.app.state.templates.TemplateResponse(  # type: ignore[no-any-return]
        request, name, full, status_code=status_code
    )


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    value = _param(request, name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {value!r}") from None


def _with(request: Request, **changes: Any) -> str:
    """The current query string with ``changes`` applied (None removes a parameter)."""
    params = dict(request.query_params)
    params.update({k: str(v) for k, v in changes.items() if v is not None})
    for key in [k for k, v in changes.items() if v is None]:
        params.pop(key, None)
    return "?" + urlencode({k: v for k, v in params.items() if v})


async def home(request: Request) -> Response:
    return RedirectResponse(f"{_base(request)}/events", status_code=307)


# -- events ---------------------------------------------------------------------------------


async def events_context(request: Request) -> Context:
    query = EventQuery(
        topic=_param(request, "topic"),
        key=_param(request, "key"),
        correlation_id=_param(request, "correlation_id"),
        id_prefix=_param(request, "id"),
        since=parse_time(_param(request, "since")),
        until=parse_time(_param(request, "until")),
    )
    limit = min(max(_int(request, "limit", 50) or 50, 1), 500)
    async with _dash(request).reading() as view:
        page = await list_events(view, query, before=_int(request, "before"), limit=limit)
    return {
        "page": page,
        "next_url": None if page.next_before is None else _with(request, before=page.next_before),
        "newest_url": _with(request, before=None) if _param(request, "before") else None,
    }


async def events(request: Request) -> Response:
    context = await events_context(request)
    return render(
        request, "events.html", {"nav": "events", "filters": request.query_params, **context}
    )


async def event(request: Request) -> Response:
    offset = int(request.path_params["offset"])
    async with _dash(request).reading() as view:
        detail = await event_detail(view, offset)
    return render(request, "event.html", {"nav": "events", "e": detail})


# -- chains ---------------------------------------------------------------------------------


async def chains(request: Request) -> Response:
    chain_id = _param(request, "id")
    if chain_id is not None:
        return RedirectResponse(f"{_base(request)}/chains/{segment(chain_id)}", status_code=303)
    range_name = _param(request, "range") or "24h"
    topic = _param(request, "topic")
    async with _dash(request).reading() as view:
        _, first = await window_start(view, range_name)
        stats = await topic_stats(view, from_offset=first)
        recent = (
            []
            if view.index is None
            else await view.index.recent_chains(from_offset=first, topic=topic, limit=50)
        )
        has_index = view.index is not None
    return render(
        request,
        "chains.html",
        {
            "nav": "chains",
            "stats": stats,
            "recent": recent,
            "topic": topic,
            "range": range_name,
            "ranges": [*RANGES, "all"],
            "has_index": has_index,
        },
    )


async def chain(request: Request) -> Response:
    chain_id = request.path_params["chain_id"]
    async with _dash(request).reading() as view:
        if view.index is not None:
            # An event id that is not a chain's own: show the chain it belongs to.
            found = await view.index.by_id(chain_id)
            if found is not None and found.correlation_id not in (None, chain_id):
                return RedirectResponse(
                    f"{_base(request)}/chains/{segment(found.correlation_id)}?highlight={segment(chain_id)}",
                    status_code=303,
                )
        result = await view.chain(chain_id)
    svg = chain_svg(
        result, base=_base(request), highlight=_param(request, "highlight"), limit=CHAIN_DRAWN
    )
    drawn = min(len(result.walk()), CHAIN_DRAWN)
    return render(
        request, "chain.html", {"nav": "chains", "chain": result, "svg": svg, "drawn": drawn}
    )


# -- errors ---------------------------------------------------------------------------------


async def errors(request: Request) -> Response:
    limit = 50
    async with _dash(request).reading() as view:
        rows = await view.store.errors(
            subscriber=_param(request, "subscriber"),
            topic=_param(request, "topic"),
            since=parse_time(_param(request, "since")),
            until=parse_time(_param(request, "until")),
            before_id=_int(request, "before"),
            limit=limit,
        )
        subscribers = [s.name for s in await view.store.subscribers()]
    return render(
        request,
        "errors.html",
        {
            "nav": "errors",
            "rows": rows,
            "subscribers": subscribers,
            "filters": request.query_params,
            "next_url": _with(request, before=rows[-1].id) if len(rows) == limit else None,
        },
    )


# -- dead letter queue ----------------------------------------------------------------------


DLQ_PAGE = 100
"""Entries a DLQ page lists unless ``limit`` says otherwise (at most 500)."""


async def dlq_context(request: Request) -> Context:
    status = _param(request, "status") or "open"
    if status not in DLQ_STATUSES:
        raise ConfigurationError(f"status {status!r}: one of {', '.join(DLQ_STATUSES)}")
    order = _param(request, "order") or "newest"
    if order not in ("newest", "oldest"):
        raise ConfigurationError(f"order {order!r}: newest or oldest")
    subscriber, topic = _param(request, "subscriber"), _param(request, "topic")
    limit = min(max(_int(request, "limit", DLQ_PAGE) or DLQ_PAGE, 1), 500)
    beyond = _int(request, "after")
    statuses = DLQ_STATUSES[status]
    async with _dash(request).reading() as view:
        entries = await view.store.dlq_entries(
            subscriber=subscriber,
            topic=topic,
            status=statuses,
            limit=limit,
            newest_first=order == "newest",
            beyond=beyond,
        )
        total = await view.store.dlq_count(subscriber=subscriber, topic=topic, status=statuses)
        subscribers = [s.name for s in await view.store.subscribers()]
    # The bulk buttons act on these ids, the dead entries of this page, and on nothing else.
    dead = [e.id for e in entries if e.status == "dead"]
    return {
        "entries": entries,
        "total": total,
        "subscribers": subscribers,
        "statuses": list(DLQ_STATUSES),
        "status": status,
        "order": order,
        "subscriber": subscriber,
        "topic": topic,
        "dead_ids": ",".join(map(str, dead)),
        "dead": len(dead),
        "next_url": _with(request, after=entries[-1].id) if len(entries) == limit else None,
        "first_url": _with(request, after=None) if beyond is not None else None,
    }


async def dlq(request: Request) -> Response:
    context = await dlq_context(request)
    return render(
        request, "dlq.html", {"nav": "dlq", "message": _param(request, "message"), **context}
    )


async def dlq_entry(request: Request) -> Response:
    async with _dash(request).reading() as view:
        entry = await view.store.dlq_entry(int(request.path_params["entry_id"]))
        detail = await event_detail(view, entry.offset)
    return render(request, "dlq_entry.html", {"nav": "dlq", "entry": entry, "e": detail})


ACTIONS = {
    "retry": ("dlq.retry", "dlq.retry_ids", "retried"),
    "discard": ("dlq.discard", "dlq.discard_ids", "discarded"),
}


async def dlq_action(request: Request) -> Response:
    """POST ``/dlq/retry`` or ``/dlq/discard``: one entry (``id``) or exactly the entries
    listed in ``ids`` (comma-separated: those the operator saw and confirmed). All of them or,
    if one is not dead any more, none. Needs the session's CSRF token."""
    wants_json = "application/json" in request.headers.get("accept", "")
    form = await request.form()
    submitted = form.get(CSRF_FIELD)
    if not csrf_valid(request, submitted if isinstance(submitted, str) else None):
        return _answer(
            request, wants_json, False, "missing or wrong CSRF token: reload the page", 403
        )
    if request.path_params["action"] not in ACTIONS:
        return _answer(request, wants_json, False, "unknown action", 404)
    one, listed, verb = ACTIONS[request.path_params["action"]]
    fields = {k: v for k, v in form.items() if isinstance(v, str) and v}
    try:
        async with _dash(request).reading() as view:
            pass  # opened; the action itself runs outside the lock (it may wait for the broker)
        if "ids" in fields:
            chosen = [int(i) for i in fields["ids"].split(",")]
            ids = await view.dlq_action(listed, {"ids": chosen})
        elif "id" in fields:
            ids = await view.dlq_action(one, {"id": int(fields["id"])})
        else:
            return _answer(request, wants_json, False, "give an entry id or a list of ids", 400)
    except (LocalBrokerError, ValueError) as exc:
        return _answer(request, wants_json, False, str(exc), 409)
    message = f"{verb} {len(ids)} entr{'y' if len(ids) == 1 else 'ies'}" + (
        f" ({', '.join(map(str, ids))})" if ids else ""
    )
    return _answer(request, wants_json, True, message, 200, ids)


def _answer(
    request: Request,
    wants_json: bool,
    ok: bool,
    message: str,
    status: int,
    ids: list[int] | None = None,
) -> Response:
    if wants_json:
        return JSONResponse({"ok": ok, "message": message, "ids": ids or []}, status_code=status)
    return RedirectResponse(f"{_base(request)}/dlq?{urlencode({'message': message})}", 303)


# -- subscribers ----------------------------------------------------------------------------


async def subscribers_context(request: Request) -> Context:
    dashboard = _dash(request)
    async with dashboard.reading() as view:
        subs = await view.subscribers()
        running = view.broker_running()
        processes = await read_processes(view.store)
    return {
        "subscribers": subs,
        "rates": dashboard.meter.update(subs),
        "processes": processes,
        "now": time.time(),
        "broker_running": running,
    }


async def subscribers(request: Request) -> Response:
    return render(
        request, "subscribers.html", {"nav": "subscribers", **await subscribers_context(request)}
    )


# -- analytics and system -------------------------------------------------------------------


async def analytics(request: Request) -> Response:
    range_name = _param(request, "range") or "24h"
    topic = _param(request, "topic")
    context: Context = {"nav": "analytics", "range": range_name, "ranges": [*RANGES, "all"]}
    async with _dash(request).reading() as view:
        since, first = await window_start(view, range_name)
        context["has_index"] = view.index is not None
        context["stats"] = await topic_stats(view, from_offset=first)
        if topic is not None and view.index is not None:
            result = await topic_analytics(view, topic, since=since, from_offset=first)
            context["topic"] = topic
            context["charts"] = {
                "over_time": bar_chart(result.over_time, title=f"{topic}: events over time"),
                "tries": bar_chart(result.tries, title="tries per delivery", width=360),
                "handlers": {
                    name: bar_chart(bars, title=f"{name}: handler time", width=360)
                    for name, bars in result.handler_times.items()
                },
            }
            context["quantiles"] = result.quantiles
            context["tries"] = result.tries
    return render(request, "analytics.html", context)


async def system(request: Request) -> Response:
    async with _dash(request).reading() as view:
        await view.refresh()
        segments = view.log.segments()
        archive = await view.store.get_value(ARCHIVE_STATE_KEY)
        context = {
            "nav": "system",
            "data_dir": str(view.data_dir),
            "broker_running": view.broker_running(),
            "log": view.log,
            "segments": len(segments),
            "log_bytes": sum(s.size_bytes for s in segments),
            "indexed_to": None if view.index is None else await view.index.next_offset(),
            "sync": sync_rows(await view.sync_status(), stale_after=request.app.state.stale_after),
            "stale_after": request.app.state.stale_after,
            "archive": archive if isinstance(archive, dict) else None,
        }
    return render(request, "system.html", context)


# -- live updates ---------------------------------------------------------------------------

LIVE: dict[str, tuple[Callable[[Request], Awaitable[Context]], str]] = {
    "events": (events_context, "partials/events.html"),
    "dlq": (dlq_context, "partials/dlq.html"),
    "subscribers": (subscribers_context, "partials/subscribers.html"),
}


async def live(request: Request) -> Response:
    """Server-sent events: the live part of a page, re-rendered whenever the data changes."""
    page = request.path_params["page"]
    if page not in LIVE:
        raise NotFoundError(f"no live page {page!r}")
    build, name = LIVE[page]
    template = request.app.state.templates.get_template(name)
    common = {"base": _base(request), "csrf": csrf_token(request), "filters": request.query_params}

    async def fragment() -> str:
        try:
            context = await build(request)
        except LocalBrokerError as exc:
            return f'<p class="error">{escape(str(exc))}</p>'
        return str(template.render({**common, **context}))

    return EventSourceResponse(live_fragments(_dash(request).feed, fragment), ping=15)
