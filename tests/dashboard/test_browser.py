"""End to end in a real headless Chromium: a running broker, the dashboard server, a browser.

Screenshots of every page are saved under build/screenshots/ (README names it; curated copies
are committed in docs/screenshots/); set LOCALBROKER_SCREENSHOTS to write them elsewhere.
"""

from __future__ import annotations

import base64
import contextlib
import http.cookies
import http.server
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from localbroker.dashboard import create_app
from tests.conftest import require_binary
from tests.dashboard.conftest import SCRIPT, Blog, serve

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
# See ../shared/browser: no sandbox as root, and no attempts to reach the internet.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(
    os.environ.get("LOCALBROKER_SCREENSHOTS", Path(__file__).parents[2] / "build" / "screenshots")
)
WAIT_MS = 10_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_binary(CHROMIUM, "chromium (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def blog(tmp_path: Path) -> AsyncIterator[Blog]:
    """The blog app, running (the broker in this test's event loop)."""
    blog = Blog(tmp_path)
    async with blog.broker:
        yield blog


async def open_page(browser: Browser) -> tuple[Page, list[str]]:
    """A page at a screenshot-friendly size, and the list its script errors are collected in."""
    page = await browser.new_page(viewport={"width": 1280, "height": 760})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    return page, problems


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SHOTS / f"{name}.png")


async def test_dlq_retry_after_fixing_the_handler(blog: Blog, browser: Browser) -> None:
    correlation = await blog.post("first")
    await blog.broker.wait_idle()
    (entry,) = await blog.broker.dlq.list()
    with serve(create_app(blog.broker.data_dir)) as url:
        page, problems = await open_page(browser)
        await page.goto(f"{url}/dlq?status=all")
        row = page.locator(f'tr[data-entry="{entry.id}"]')
        await expect(row.locator(".status")).to_have_text("dead")
        await expect(page.locator("#live-status")).to_have_text("live", timeout=WAIT_MS)
        await shot(page, "dlq")

        blog.broken = False  # the fix is deployed
        await row.get_by_role("button", name="Retry").click()
        await expect(page.locator("#flash")).to_have_text(
            f"retried 1 entry ({entry.id})", timeout=WAIT_MS
        )
        # No reload: the live stream shows the entry handled by the comments subscriber.
        await expect(row.locator(".status")).to_have_text("resolved", timeout=WAIT_MS)
        await expect(row.get_by_role("button", name="Retry")).to_have_count(0)

        await page.goto(f"{url}/chains/{correlation}")
        await expect(page.locator("svg.chain a.node")).to_have_count(3)  # + comment.added
        assert problems == []
    chain = await blog.broker.chain(correlation)
    assert [n.state for _, n in chain.walk()] == ["done", "done", "done"]


async def test_chain_shows_every_node(blog: Blog, browser: Browser) -> None:
    blog.broken = False
    correlation = await blog.post("chained")
    await blog.post("other")
    await blog.broker.wait_idle()
    chain = await blog.broker.chain(correlation)
    with serve(create_app(blog.broker.data_dir)) as url:
        page, problems = await open_page(browser)
        await page.goto(f"{url}/chains?range=all")
        await page.get_by_label("Open a chain").fill(correlation)
        await page.get_by_role("button", name="Show").click()
        nodes = page.locator("svg.chain a.node")
        await expect(nodes).to_have_count(len(chain))
        drawn = [await n.get_attribute("data-event-id") for n in await nodes.all()]
        assert drawn == [node.event.id for _, node in chain.walk()]
        assert {await n.get_attribute("data-state") for n in await nodes.all()} == {"done"}
        await shot(page, "chain")
        await nodes.nth(1).click()  # a node links to its event
        await expect(page.locator("h1")).to_contain_text(
            f"Event @{chain.walk()[1][1].event.offset}"
        )
        assert problems == []


async def test_script_payload_is_not_executed(blog: Blog, browser: Browser) -> None:
    with serve(create_app(blog.broker.data_dir)) as url:
        page, problems = await open_page(browser)
        await page.goto(f"{url}/events")
        await expect(page.locator("#live-status")).to_have_text("live", timeout=WAIT_MS)
        # Published while the page is open: the row arrives through the live stream.
        await blog.post(SCRIPT, SCRIPT)
        row = page.locator("tr[data-offset]", has_text="blog.post_created")
        await expect(row).to_have_count(1, timeout=WAIT_MS)
        await row.locator("a").first.click()
        await expect(page.locator("pre.payload")).to_contain_text(SCRIPT)
        assert await page.evaluate("window.__pwned") is None
        assert problems == []


async def test_every_page_renders_without_script_errors(blog: Blog, browser: Browser) -> None:
    """A tour of all pages (their screenshots are the README's)."""
    correlation = await blog.post("tour", "a post with a body")
    await blog.broker.wait_idle()
    blog.broken = False
    await blog.post("second")
    await blog.broker.wait_idle()
    (entry,) = await blog.broker.dlq.list()
    await blog.broker.store.set_value(
        "sync.status.redis",
        {"kind": "redis", "connected": True, "cursor": 6, "running": True, "updated": time.time()},
    )
    pages = {
        "events": ("/events", "Events"),
        "event": ("/events/1", "Event @1"),
        "chains": ("/chains?range=all", "Chains"),
        "chain-tour": (f"/chains/{correlation}", "Chain"),
        "errors": ("/errors", "Errors"),
        "dlq-entry": (f"/dlq/{entry.id}", f"DLQ entry {entry.id}"),
        "subscribers": ("/subscribers", "Subscribers"),
        "analytics": (
            "/analytics?range=1h&topic=blog.post_created",
            "Analytics: blog.post_created",
        ),
        "system": ("/system", "System"),
    }
    # The status above is written once: a loaded machine may take more than the default
    # 10 s to reach the System page, which would then rightly call it stale.
    with serve(create_app(blog.broker.data_dir, stale_after=3600)) as url:
        page, problems = await open_page(browser)
        for name, (path, heading) in pages.items():
            await page.goto(url + path)
            await expect(page.locator("h1")).to_contain_text(heading)
            await shot(page, name)
        await expect(page.locator('#sync tr[data-sync="redis"] .sync-state')).to_have_text(
            "connected"
        )
        await expect(page.locator("#archive")).to_contain_text("not configured")
        assert problems == []


async def test_bulk_discard_acts_on_exactly_what_the_dialog_counted(
    blog: Blog, browser: Browser
) -> None:
    for n in range(25):
        await blog.post(f"post {n}")
    await blog.broker.wait_idle()
    before = {e.id for e in await blog.broker.dlq.list()}
    assert len(before) == 25
    with serve(create_app(blog.broker.data_dir)) as url:
        page, problems = await open_page(browser)
        await page.goto(f"{url}/dlq?limit=10")
        await expect(page.locator(".count")).to_have_text("25 match, 10 shown (newest first)")
        shown = {
            int(await r.get_attribute("data-entry") or 0)
            for r in await page.locator("tr[data-entry]").all()
        }
        assert shown == set(sorted(before)[-10:])  # newest first
        dialogs: list[str] = []

        async def accept(dialog) -> None:  # type: ignore[no-untyped-def]
            dialogs.append(dialog.message)
            await dialog.accept()

        page.on("dialog", accept)
        await page.get_by_role("button", name="Discard the 10 dead shown").click()
        await expect(page.locator("#flash")).to_contain_text(
            "discarded 10 entries", timeout=WAIT_MS
        )
        assert dialogs == ["Discard the 10 dead entries listed on this page (25 match the filter)?"]
        # The live list now shows the next ten; the older fifteen are all still dead.
        await expect(page.locator(".count")).to_have_text(
            "15 match, 10 shown (newest first)", timeout=WAIT_MS
        )
        await shot(page, "dlq-bulk")
        assert problems == []
    left = {e.id for e in await blog.broker.dlq.list()}
    assert left == before - shown


@contextlib.contextmanager
def attacker(dashboard: str, entry: int) -> Iterator[tuple[str, list[str]]]:
    """A page on another port of 127.0.0.1 that tries to discard ``entry`` on the dashboard.

    Its server receives the dashboard's cookies (browsers send a host's cookies to every
    port) and uses what it can read in them as the CSRF token, in a form POST and a fetch.
    Yields its URL and the Cookie headers it received.
    """
    received: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            cookies = http.cookies.SimpleCookie(self.headers.get("cookie", ""))
            received.append(self.headers.get("cookie", ""))
            leaked = ""
            if "localbroker_session" in cookies:
                value = cookies["localbroker_session"].value.split(".")[0]
                payload = base64.b64decode(value + "=" * (-len(value) % 4))
                leaked = next(iter(json.loads(payload).values()), "")
            action = f"{dashboard}/dlq/discard"
            body = (
                f'<!doctype html><form id="f" method="post" action="{action}">'
                f'<input name="csrf" value="{leaked}"><input name="id" value="{entry}"></form>'
                f"<script>fetch({json.dumps(action)}, {{method: 'POST', mode: 'no-cors', "
                f"credentials: 'include', body: new URLSearchParams({{csrf: "
                f"{json.dumps(leaked)}, id: '{entry}'}})}}).finally(() => "
                "document.getElementById('f').submit());</script>"
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("token", [None, "cross-port-test-token"])
async def test_a_page_on_another_port_cannot_discard(
    blog: Blog, browser: Browser, token: str | None
) -> None:
    await blog.post("victim")
    await blog.broker.wait_idle()
    (entry,) = await blog.broker.dlq.list()
    with serve(create_app(blog.broker.data_dir, token=token)) as url:
        page, _ = await open_page(browser)
        await page.goto(f"{url}/dlq" + (f"?token={token}" if token else ""))
        await expect(page.locator(f'tr[data-entry="{entry.id}"]')).to_have_count(1)
        with attacker(url, entry.id) as (evil, received):
            await page.goto(evil)
            # The form POST lands on the dashboard, which refuses it.
            await expect(page.locator("body")).to_contain_text(
                f"refused: a POST request from {evil.rstrip('/')}", timeout=WAIT_MS
            )
        assert page.url == f"{url}/dlq/discard"
        assert "localbroker_session=" in received[0]  # the cookies did reach the other port
        if token is not None:
            assert "localbroker_token=" in received[0]
            assert token not in received[0]
        await page.goto(f"{url}/dlq")
        await expect(page.locator(f'tr[data-entry="{entry.id}"] .status')).to_have_text("dead")
    assert [e.id for e in await blog.broker.dlq.list()] == [entry.id]
