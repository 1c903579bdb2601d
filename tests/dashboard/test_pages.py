"""The dashboard's pages over a data directory a real broker wrote."""

from __future__ import annotations

import base64
import html
import re
import time
from pathlib import Path

import orjson
import pytest

from localbroker import Broker, Event
from localbroker.dashboard import create_app
from localbroker.dashboard.pages import CHAIN_DRAWN
from localbroker.dashboard.queries import list_events
from localbroker.log.repair import repair
from localbroker.state.event_index import EventQuery
from localbroker.state.store import StateStore
from localbroker.view import BrokerView
from tests.broker.damage import damage_record, stall_reader, write_notes
from tests.dashboard.conftest import SCRIPT, Blog, client_for, fill
from tests.dashboard.test_system import sync_state


def csrf_of(html: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', html)
    assert match is not None
    return match.group(1)


async def test_events_page_lists_newest_first_with_states(filled) -> None:
    data, ids = filled
    async with client_for(create_app(data)) as client:
        response = await client.get("/events")
    assert response.status_code == 200
    offsets = [int(o) for o in re.findall(r'<tr data-offset="(\d+)"', response.text)]
    assert offsets == sorted(offsets, reverse=True)
    assert len(offsets) == 4  # two commands, two posts
    assert ids["first"] in response.text
    assert "state-dlq" in response.text  # the posts the comments subscriber failed


@pytest.mark.parametrize(
    ("params", "topics"),
    [
        ({"topic": "blog.*"}, {"blog.create_post", "blog.post_created"}),
        ({"topic": "blog.post_created"}, {"blog.post_created"}),
        ({"topic": "comment.>"}, set()),
        ({"key": "first"}, {"blog.post_created"}),
    ],
)
async def test_events_filters(filled, params, topics) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        response = await client.get("/events", params=params)
    found = set(re.findall(r"<td><a href=\"/events\?topic=[^\"]+\">([^<]+)</a>", response.text))
    assert found == topics


async def test_events_filter_by_chain_and_id(filled) -> None:
    data, ids = filled
    async with client_for(create_app(data)) as client:
        chain = await client.get("/events", params={"correlation_id": ids["first"]})
        by_id = await client.get("/events", params={"id": ids["script"]})
        since_future = await client.get("/events", params={"since": "2999-01-01T00:00"})
    assert len(re.findall(r"<tr data-offset=", chain.text)) == 2
    assert ids["script"] not in chain.text
    assert len(re.findall(r"<tr data-offset=", by_id.text)) == 1
    assert "No events match" in since_future.text


async def test_bad_filter_is_a_clear_400(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        bad_topic = await client.get("/events", params={"topic": "blog.>.x"})
        bad_time = await client.get("/events", params={"since": "yesterday"})
    assert bad_topic.status_code == 400
    assert "&#39;&gt;&#39; must be the last token" in bad_topic.text
    assert bad_time.status_code == 400
    assert "ISO date" in bad_time.text


async def test_event_detail_shows_payload_deliveries_and_tracebacks(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        listing = await client.get("/events", params={"topic": "blog.post_created", "key": "first"})
        (offset,) = re.findall(r'<tr data-offset="(\d+)"', listing.text)
        response = await client.get(f"/events/{offset}")
        missing = await client.get("/events/999")
    text = response.text
    assert '"title": "first"' in html.unescape(text)  # pretty JSON payload
    states = dict(re.findall(r'<tr data-subscriber="(\w+)">.*?state-(\w+)', text, re.S))
    assert states == {"search": "done", "comments": "dlq"}
    assert "Failed tries of comments" in text
    assert "ValueError: comment store down for first" in text  # the traceback
    assert text.count("<summary>try ") == 2
    assert missing.status_code == 404
    assert "no event at offset 999" in missing.text


async def test_script_payload_is_escaped(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        listing = await client.get("/events", params={"topic": "blog.post_created"})
        offsets = re.findall(r'<tr data-offset="(\d+)"', listing.text)
        pages = [(await client.get(f"/events/{o}")).text for o in offsets]
    assert listing.text.count("<script") == 1  # only the page's own script tag
    assert any("&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in p for p in pages)
    assert all(SCRIPT not in p for p in pages)
    assert "script-src 'self'" in listing.headers["content-security-policy"]


async def test_pagination_is_by_offset_and_covers_every_event_once(tmp_path: Path) -> None:
    blog = Blog(tmp_path)
    async with blog.broker:
        await blog.broker.publish_many([_note(i) for i in range(23)])
    seen: list[int] = []
    async with client_for(create_app(tmp_path)) as client:
        url = "/events?limit=10"
        while url:
            text = (await client.get(url)).text
            seen += [int(o) for o in re.findall(r'<tr data-offset="(\d+)"', text)]
            match = re.search(r'<a href="([^"]+)" rel="next">', text)
            url = "/events" + match.group(1).replace("&amp;", "&") if match else ""
    assert seen == list(range(22, -1, -1))


def _note(i: int):
    from localbroker import Event

    class Note(Event, topic="note.added"):
        n: int

    return Note(n=i)


async def test_events_without_index_are_read_from_the_log(tmp_path: Path) -> None:
    blog = Blog(tmp_path, index_events=False)
    async with blog.broker:
        first = await blog.post("a")
        await blog.post("b")
        await blog.broker.wait_idle()
    assert not (tmp_path / "index.db").exists()
    async with client_for(create_app(tmp_path)) as client:
        everything = await client.get("/events")
        chain = await client.get("/events", params={"correlation_id": first})
        analytics = await client.get("/analytics")
    assert len(re.findall(r"<tr data-offset=", everything.text)) == 4
    assert "read from the log" in everything.text
    assert len(re.findall(r"<tr data-offset=", chain.text)) == 2
    assert "analytics need it" in analytics.text


async def test_chain_page_draws_every_node_coloured_by_state(filled) -> None:
    data, ids = filled
    async with client_for(create_app(data)) as client:
        response = await client.get(f"/chains/{ids['first']}")
        missing = await client.get("/chains/nope")
    nodes = re.findall(r'class="node state-(\w+)[^"]*" data-event-id="([^"]+)"', response.text)
    assert [state for state, _ in nodes] == ["done", "dlq"]
    assert nodes[0][1] == ids["first"]
    assert response.text.count('<path class="edge"') == 1
    assert missing.status_code == 404


async def test_chain_of_an_event_id_redirects_to_its_chain(filled) -> None:
    data, ids = filled
    async with client_for(create_app(data)) as client:
        listing = await client.get("/events", params={"correlation_id": ids["first"]})
        child = re.findall(r'<a href="/events/\d+">([0-9a-f-]{36})</a>', listing.text)[0]
        response = await client.get(f"/chains/{child}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/chains/{ids['first']}?highlight={child}"


async def test_chains_summary_shows_flows_and_failure_rates(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        response = await client.get("/chains", params={"range": "all"})
        only_posts = await client.get("/chains", params={"topic": "blog.post_created"})
    rows = re.findall(r"<tr>\s*<td><a [^>]+>([^<]+)</a></td>(.*?)</tr>", response.text, re.S)
    by_topic = {topic: re.sub(r"<[^>]+>|\s+", " ", rest).split() for topic, rest in rows}
    # blog.post_created: 2 events, caused by the command, both failed and dead-lettered.
    assert by_topic["blog.post_created"] == ["2", "blog.create_post", "(2)", "2", "100.0", "%", "2"]
    assert "→ blog.post_created (2)" in response.text
    assert only_posts.text.count("/chains/") >= 2


async def test_errors_page_filters_by_subscriber_and_pages(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        everything = await client.get("/errors")
        search = await client.get("/errors", params={"subscriber": "search"})
    assert everything.text.count('<pre class="traceback">') == 4  # 2 posts x 2 tries
    assert "ValueError(&#39;comment store down for first&#39;)" in everything.text
    assert "No failed tries match" in search.text


async def test_dlq_retry_needs_csrf_and_is_carried_out(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        page = await client.get("/dlq")
        entries = re.findall(r'<tr data-entry="(\d+)">', page.text)
        assert len(entries) == 2
        forged = await client.post("/dlq/retry", data={"id": entries[0]})
        wrong = await client.post(
            "/dlq/retry",
            data={"id": entries[0], "csrf": "x" * 43},
            headers={"accept": "application/json"},
        )
        token = csrf_of(page.text)
        done = await client.post(
            "/dlq/retry",
            data={"id": entries[0], "csrf": token},
            headers={"accept": "application/json"},
        )
        again = await client.post(
            "/dlq/retry",
            data={"id": entries[0], "csrf": token},
            headers={"accept": "application/json"},
        )
        after = await client.get("/dlq", params={"status": "all"})
    assert forged.status_code == 303
    assert "CSRF" in forged.headers["location"]
    assert wrong.status_code == 403
    assert done.json() == {
        "ok": True,
        "message": f"retried 1 entry ({entries[0]})",
        "ids": [int(entries[0])],
    }
    assert again.status_code == 409
    assert "is retrying, not dead" in again.json()["message"]
    statuses = dict(
        re.findall(r'<tr data-entry="(\d+)">.*?badge status[^>]*>(\w+)<', after.text, re.S)
    )
    assert statuses == {entries[0]: "retrying", entries[1]: "dead"}


async def test_dlq_bulk_discard_acts_on_the_listed_ids_only(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        page = await client.get("/dlq", params={"limit": "1"})  # newest first: the second post
        [listed] = re.findall(r'<tr data-entry="(\d+)">', page.text)
        [ids] = re.findall(r'name="ids" value="([^"]*)"', page.text)[:1]
        older = await client.get("/dlq", params={"limit": "1", "after": listed})
        token = csrf_of(page.text)
        response = await client.post(
            "/dlq/discard", data={"csrf": token, "ids": ids}, follow_redirects=False
        )
        # A listed entry that is not dead any more: nothing is done, not even to the others.
        [other] = re.findall(r'<tr data-entry="(\d+)">', older.text)
        stale = await client.post(
            "/dlq/retry",
            data={"csrf": token, "ids": f"{other},{listed}"},
            headers={"accept": "application/json"},
        )
        after = await client.get("/dlq")
        discarded = await client.get("/dlq", params={"status": "discarded"})
    assert "2 match, 1 shown (newest first)" in page.text
    assert ids == listed
    assert int(other) < int(listed)
    assert response.status_code == 303
    assert f"discarded+1+entry+%28{listed}%29" in response.headers["location"]
    assert stale.status_code == 409
    assert f"DLQ entry {listed} is discarded, not dead" in stale.json()["message"]
    assert re.findall(r'<tr data-entry="(\d+)">', after.text) == [other]
    assert "1 match, 1 shown" in after.text
    assert re.findall(r'<tr data-entry="(\d+)">', discarded.text) == [listed]


async def test_dlq_entry_page_shows_attempts(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        page = await client.get("/dlq")
        entry = re.findall(r'<tr data-entry="(\d+)">', page.text)[0]
        response = await client.get(f"/dlq/{entry}")
    assert response.text.count('<pre class="traceback">') == 2
    assert "Retry (to comments only)" in response.text


async def test_subscribers_analytics_and_system(filled) -> None:
    data, _ = filled
    store = await StateStore.open(data / "state.db")
    await store.set_value(
        "sync.status.redis",
        {"kind": "redis", "connected": True, "cursor": 4, "running": True, "updated": time.time()},
    )
    await store.close()
    async with client_for(create_app(data)) as client:
        subs = await client.get("/subscribers")
        overview = await client.get("/analytics", params={"range": "all"})
        topic = await client.get(
            "/analytics", params={"range": "all", "topic": "blog.post_created"}
        )
        system = await client.get("/system")
    rows = dict(re.findall(r'<tr data-subscriber="(\w+)">(.*?)</tr>', subs.text, re.S))
    assert set(rows) == {"posts", "search", "comments"}
    assert "stopped" in rows["comments"]
    assert "not running" in subs.text
    assert "blog.post_created" in overview.text
    over_time, tries, *handlers = re.findall(r"<svg.*?</svg>", topic.text, re.S)
    assert over_time.count('class="bar"') == 60
    assert sum(int(n) for n in re.findall(r": (\d+)</title></rect>", over_time)) == 2
    assert tries.count('class="bar"') == 2
    assert len(handlers) == 2  # search and comments receive blog.post_created
    assert "2 tries: 2" in topic.text
    assert "1 try: 2" in topic.text
    assert sync_state(system.text, "redis") == "connected"
    assert "<th>cursor</th><td>4</td>" in system.text
    assert system.text.count("not configured") == 1  # the archive


async def test_a_stalled_subscriber_is_shown_with_the_damage_that_stalls_it(
    tmp_path: Path,
) -> None:
    await write_notes(tmp_path)
    damage = damage_record(tmp_path, 50)
    await stall_reader(tmp_path)
    async with client_for(create_app(tmp_path)) as client:
        page = await client.get("/subscribers")
    [row] = re.findall(r'<tr data-subscriber="reader" class="stalled">(.*?)</tr>', page.text, re.S)
    assert "stalled at 50" in row
    [stall] = re.findall(r'<tr class="stall" data-stalled="reader">(.*?)</tr>', page.text, re.S)
    assert html.escape(damage.named()) in stall


async def test_events_read_from_the_log_across_a_gap_are_listed_once(tmp_path: Path) -> None:
    await write_notes(tmp_path, 2100)
    damage_record(tmp_path, 999)  # the gap ends one 1000-offset scan window early
    repair(tmp_path / "log")
    (tmp_path / "index.db").unlink()  # every event is read from the log
    async with BrokerView(tmp_path) as view:
        page = await list_events(view, EventQuery(), before=None, limit=3000)
    offsets = [row.event.offset for row in page.rows]
    assert offsets == [n for n in reversed(range(2100)) if n != 999]


async def test_token_is_required_on_every_request(filled) -> None:
    data, _ = filled
    token = "t" * 20
    app = create_app(data, token=token)
    async with client_for(app) as client:
        denied = await client.get("/events")
        static = await client.get("/static/dashboard.js")
        header = await client.get("/events", headers={"authorization": f"Bearer {token}"})
        login = await client.get(f"/events?topic=blog.*&token={token}")
        with_cookie = await client.get("/events")
    assert denied.status_code == 401
    assert static.status_code == 401
    assert header.status_code == 200
    assert login.status_code == 303
    assert login.headers["location"] == "http://127.0.0.1/events?topic=blog.%2A"
    assert "httponly" in login.headers["set-cookie"].lower()
    assert with_cookie.status_code == 200


async def test_mounted_under_a_prefix(filled) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    data, ids = filled
    inner = create_app(data)
    host = Starlette(routes=[Mount("/broker", app=inner)])
    host.state.dashboard = inner.state.dashboard
    async with client_for(host) as client:
        response = await client.get("/broker/events")
    assert response.status_code == 200
    assert f'href="/broker/chains/{ids["first"]}"' in response.text
    assert 'src="/broker/static/dashboard.js"' in response.text


async def test_fill_is_reusable(tmp_path: Path) -> None:
    # The fixture's own guard: the blog dead-letters both posts.
    ids = await fill(tmp_path)
    store = await StateStore.open(tmp_path / "state.db", readonly=True)
    try:
        assert len(await store.dlq_entries()) == 2
    finally:
        await store.close()
    assert len(ids) == 2


async def test_actions_from_another_origin_are_refused(filled) -> None:
    data, _ = filled
    async with client_for(create_app(data)) as client:
        page = await client.get("/dlq")
        [entry, _] = re.findall(r'<tr data-entry="(\d+)">', page.text)
        form = {"id": entry, "csrf": csrf_of(page.text)}
        other_port = await client.post(
            "/dlq/discard", data=form, headers={"origin": "http://127.0.0.1:9999"}
        )
        by_referer = await client.post(
            "/dlq/discard", data=form, headers={"referer": "http://127.0.0.1:9999/attack"}
        )
        opaque = await client.post("/dlq/discard", data=form, headers={"origin": "null"})
        still = await client.get("/dlq")
        own = await client.post(
            "/dlq/discard",
            data=form,
            headers={"origin": "http://127.0.0.1", "accept": "application/json"},
        )
    for refused in (other_port, by_referer, opaque):
        assert refused.status_code == 403
    assert other_port.text.startswith(
        "refused: a POST request from http://127.0.0.1:9999, not from this dashboard "
        "(http://127.0.0.1)"
    )
    assert f'<tr data-entry="{entry}">' in still.text
    assert own.json()["ids"] == [int(entry)]


def _cookie_payload(set_cookie: str) -> str:
    """What a page that receives the signed session cookie can read from it."""
    value = set_cookie.split(";")[0].split("=", 1)[1].split(".")[0]
    return base64.b64decode(value + "=" * (-len(value) % 4)).decode()


async def test_cookies_hold_no_secret_a_reader_could_reuse(filled) -> None:
    data, _ = filled
    token = "t" * 20
    async with client_for(create_app(data, token=token)) as client:
        login = await client.get(f"/dlq?token={token}")
        page = await client.get("/dlq")
        readable = _cookie_payload(page.headers["set-cookie"])
        # What the cookies hold, replayed as the CSRF token, does not pass.
        [entry, _] = re.findall(r'<tr data-entry="(\d+)">', page.text)
        sid = orjson.loads(readable)["sid"]
        forged = await client.post(
            "/dlq/discard",
            data={"id": entry, "csrf": sid},
            headers={"accept": "application/json"},
        )
    assert token not in login.headers["set-cookie"]
    assert login.headers["set-cookie"].startswith("localbroker_token=")
    assert csrf_of(page.text) not in readable
    assert forged.status_code == 403


class Shipped(Event, topic="order.shipped"):
    n: int


async def test_chain_ids_with_a_slash_are_linked_encoded(tmp_path: Path) -> None:
    root = "orders/1700000000000-0"  # an id as inbound Redis events have
    async with Broker(tmp_path) as broker:
        await broker.publish(Shipped(n=0, id=root, correlation_id=root))
        await broker.publish(Shipped(n=1, correlation_id=root, causation_id=root))
    async with client_for(create_app(tmp_path)) as client:
        events = await client.get("/events")
        chain = await client.get("/chains/orders%2F1700000000000-0")
        by_form = await client.get("/chains", params={"id": root})
    assert 'href="/chains/orders%2F1700000000000-0"' in events.text
    assert chain.status_code == 200
    assert chain.text.count('class="node state-') == 2
    assert by_form.status_code == 303
    assert by_form.headers["location"] == "/chains/orders%2F1700000000000-0"


async def test_a_chain_beyond_the_drawing_limit_says_how_much_is_drawn(tmp_path: Path) -> None:
    size = CHAIN_DRAWN + 7
    async with Broker(tmp_path) as broker:
        first = await broker.publish(Shipped(n=0))
        await broker.publish_many(
            Shipped(n=n, correlation_id=first.id, causation_id=first.id) for n in range(1, size)
        )
    async with client_for(create_app(tmp_path)) as client:
        page = await client.get(f"/chains/{first.id}")
    assert f"{CHAIN_DRAWN} of {size} events shown in the drawing" in page.text
    assert page.text.count('class="node state-') == CHAIN_DRAWN
    assert page.text.count("<tr data-event-id=") == size
