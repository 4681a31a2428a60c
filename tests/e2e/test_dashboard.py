"""The web dashboard at /ui (issue 14, item 6), in Debian's Chromium driven by Playwright,
against a real `fmesh up`: log in through the form, see the functions in the topology,
watch a counter move as an event goes through, trace the event by id, and replay a dead
letter with its button. Screenshots of each step go to the test's tmp dir.

Hostile text (an event id that is HTML) must show as text: no element is injected, no
dialog opens. A read token's session gets no replay or purge buttons."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from support import Mesh, Receiver, wait_for, write_manifest

CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_ID = '<img src=x onerror="alert(1)">'
WAIT_MS = 20_000  # bound on every wait in the page


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium could not be installed: {CHROMIUM} is missing (.ci/run installs it with apt "
                    "where apt works: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: "
                                   "pip install -e '.[test]'")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-background-networking"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def dashboard_mesh(tmp_path_factory):
    """One mesh for the module (starting and deploying is most of these tests' time): a
    function that succeeds, one that fails (retries 0: dead letters) while its gate file
    exists, and a subscription to a real HTTP sink. Tests leave the gate closed."""
    folder = tmp_path_factory.mktemp("dashboard")
    receiver = Receiver()
    gate = folder / "gate-closed"
    gate.touch()
    manifest = write_manifest(folder, f"""
functions:
  greeter:
    handler: {{fixtures}}/append/handler.py:handle
    on: [{{{{type: com.example.greet}}}}]
    env: {{{{APPEND_TO: "{folder / 'greeted.txt'}"}}}}
  picky:
    handler: {{fixtures}}/gate/handler.py:handle
    on: [{{{{type: com.example.picky}}}}]
    env: {{{{GATE_CLOSED: "{gate}", APPEND_TO: "{folder / 'picked.txt'}"}}}}
    delivery: {{{{retries: 0}}}}
  echo:                                   # replies to its own replies: a loop, cut at the hop limit
    handler: {{functions}}/hello/handler.py:handle
    on: [{{{{type: {{{{prefix: com.example.loop}}}}}}}}]
subscriptions:
  audit:
    filter: {{{{type: com.example.greet}}}}
    to: {receiver.url}/audit
""")
    mesh = Mesh(folder / "data").start()
    try:
        mesh.cli("deploy", "-f", str(manifest), "--no-verify")  # the fixtures are known to start
        yield mesh, gate
    finally:
        mesh.stop()
        receiver.close()


class Page:
    """One browser page on the dashboard, with the dialogs it opened and CSP reports it logged."""

    def __init__(self, browser, mesh, shots: Path) -> None:
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.dialogs: list[str] = []
        self.csp_errors: list[str] = []
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.on("console", lambda m: self.csp_errors.append(m.text) if "Content Security Policy" in m.text
                     else None)
        self.mesh = mesh
        self.shots = shots
        shots.mkdir(exist_ok=True)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def login(self, token: str) -> None:
        self.page.goto(self.mesh.url + "/ui")
        self.page.fill("#token", token)
        self.page.click("#login-form button[type=submit]")

    def wait_until(self, script: str, arg=None) -> None:
        self.page.wait_for_function(script, arg=arg, timeout=WAIT_MS)

    def close(self) -> None:
        self.context.close()


def send(mesh, event_type: str, event_id: str) -> None:
    event = {"specversion": "1.0", "id": event_id, "source": "/dashboard-test", "type": event_type}
    answer = httpx.post(mesh.url + "/", content=json.dumps(event),
                        headers={"content-type": "application/cloudevents+json"})
    assert answer.status_code == 202, answer.text


def cell(function: str, column: str) -> str:
    return f'#functions tr[data-function="{function}"] td.{column}'


DELIVERED = {"function:greeter": "delivered", "subscription:audit": "delivered"}


def search(ui: Page, event_id: str) -> None:
    ui.page.fill("#event-id", event_id)
    ui.page.click("#search-form button[type=submit]")


def outcomes(mesh, event_id: str) -> dict:
    answer = mesh.api("GET", f"/v1/trail/{quote(event_id, safe='')}")
    return answer.json()["trail"][0]["outcome"] if answer.status_code == 200 else {}


def letters_of(mesh, event_id: str) -> list[dict]:
    letters = mesh.api("GET", "/v1/dead-letters").json()["dead_letters"]
    return [d for d in letters if d["event"]["attributes"]["id"] == event_id]


def test_the_dashboard_end_to_end(browser, dashboard_mesh, tmp_path):
    mesh, gate = dashboard_mesh
    ui = Page(browser, mesh, tmp_path / "screenshots")
    try:
        ui.login("not-the-token")
        ui.page.wait_for_selector("#login-error:has-text('Wrong token')")
        ui.shot("1-wrong-token")

        ui.login(mesh.token)
        for name in ("greeter", "picky"):  # in the topology, and in the table
            ui.page.wait_for_selector(f'#topology g.node.function[data-function="{name}"]')
        ui.page.wait_for_selector('#topology g.node.sink:has-text("audit")')
        ui.page.wait_for_selector("#live:has-text('live')")
        assert ui.page.locator("#token").input_value() == ""
        ui.shot("2-topology")

        delivered = int(ui.page.inner_text(cell("greeter", "delivered")))
        send(mesh, "com.example.greet", "greet-1")
        ui.wait_until("([s, n]) => document.querySelector(s)?.textContent === n",
                      [cell("greeter", "delivered"), str(delivered + 1)])
        ui.page.wait_for_selector('#topology g.edge[data-edge="function:greeter"] text.rate')
        ui.shot("3-counter-moved")

        wait_for(lambda: outcomes(mesh, "greet-1") == DELIVERED, 20, message="greet-1 at the function and the sink")
        search(ui, "greet-1")
        ui.page.wait_for_selector('#trail .trail-entry[data-event="greet-1"]')
        for part in DELIVERED:
            ui.page.wait_for_selector(f'#trail li.route[data-subscription="{part}"] .outcome.delivered')
            ui.page.wait_for_selector(f'#trail li.route[data-subscription="{part}"] li.step .kind.delivered')
        assert "/dashboard-test" in ui.page.inner_text("#trail")
        ui.shot("4-trace")

        send(mesh, "com.example.picky", HOSTILE_ID)  # fails: its gate is closed, and no retries
        row = ui.page.locator("#dead-letters tbody tr").filter(has_text=HOSTILE_ID)
        row.wait_for()
        assert HOSTILE_ID in ui.page.inner_text(cell("picky", "last-error"))  # as text
        ui.page.wait_for_selector('#failures li:has-text("picky")')
        [letter] = letters_of(mesh, HOSTILE_ID)
        ui.shot("5-dead-letter")

        delivered = mesh.status("picky")["delivered"]
        gate.unlink()  # the function works now: the replayed letter gets delivered
        try:
            row.locator("button.replay").click()
            ui.page.wait_for_selector("#dead-message:has-text('Replayed 1')")
            row.wait_for(state="detached")
            ui.wait_until("([s, n]) => document.querySelector(s)?.textContent === n",
                          [cell("picky", "delivered"), str(delivered + 1)])
        finally:
            gate.touch()
        assert letters_of(mesh, HOSTILE_ID) == [] and letter["id"] not in [
            d["id"] for d in mesh.api("GET", "/v1/dead-letters").json()["dead_letters"]]
        assert mesh.status("picky")["delivered"] == delivered + 1
        ui.shot("6-replayed")

        send(mesh, "com.example.picky", "to-purge")
        ui.page.locator("#dead-letters tbody tr").filter(has_text="to-purge").wait_for()
        ui.page.click("#purge")  # once arms it, twice purges: no confirm() dialog
        ui.page.click("#purge:has-text('Click again')")
        ui.page.wait_for_selector("#dead-message:has-text('Purged')")
        ui.page.wait_for_selector("#dead-empty:visible")
        assert letters_of(mesh, "to-purge") == []

        ui.page.click("#logout")
        ui.page.wait_for_selector("#login-form:visible")
        assert ui.page.evaluate("async () => (await fetch('/v1/status')).status") == 401
        ui.shot("7-logged-out")

        assert ui.page.locator("img").count() == 0, "an event id was rendered as HTML"
        assert ui.dialogs == []
        assert ui.csp_errors == []
    finally:
        ui.close()


def test_the_search_shows_dead_letters_and_events_that_matched_nothing(browser, dashboard_mesh, tmp_path):
    mesh, _ = dashboard_mesh
    hostile = '<img src=y onerror="alert(2)">/../ui'  # markup, and a slash that must stay in the id
    send(mesh, "com.example.picky", hostile)  # dead-lettered: its gate is closed
    send(mesh, "com.example.nobody", "lost-1")
    wait_for(lambda: outcomes(mesh, hostile) == {"function:picky": "dead-lettered"}, 20,
             message="the hostile event dead-lettered")
    ui = Page(browser, mesh, tmp_path / "screenshots-trace")
    try:
        ui.login(mesh.token)
        row = ui.page.locator("#dead-letters tbody tr").filter(has_text=hostile)
        row.locator("td.event-id button").click()  # the dead letter's id looks the event up
        ui.page.wait_for_selector('#trail li.route[data-subscription="function:picky"] .outcome.dead-lettered')
        assert hostile in ui.page.inner_text("#trail") and "RuntimeError: gate closed" in ui.page.inner_text("#trail")
        ui.shot("trace-dead-lettered")

        wait_for(lambda: mesh.api("GET", "/v1/trail/lost-1").status_code == 200, 20, message="lost-1 in the trail")
        search(ui, "lost-1")
        ui.page.wait_for_selector("#trail li.unrouted:has-text('matched nothing')")
        search(ui, "never-sent")
        ui.page.wait_for_selector("#trail p.error:has-text('no event with id')")
        ui.shot("trace-unknown")
        assert ui.page.locator("img").count() == 0 and ui.dialogs == [] and ui.csp_errors == []
    finally:
        ui.close()


def test_a_reply_cut_at_the_hop_limit_shows_as_not_stored_under_its_parent(browser, dashboard_mesh, tmp_path):
    mesh, _ = dashboard_mesh
    send(mesh, "com.example.loop", "loop-1")
    wait_for(lambda: mesh.status("echo")["dead_lettered"] == 1, 20, message="the loop to be cut")
    [letter] = [d for d in mesh.api("GET", "/v1/dead-letters").json()["dead_letters"]
                if d["event"]["attributes"]["type"].startswith("com.example.loop")]
    cut = letter["event"]["attributes"]["id"]
    parent = mesh.api("GET", f"/v1/trail/{cut}").json()["trail"][0]["parent"]["id"]
    ui = Page(browser, mesh, tmp_path / "screenshots-loop")
    try:
        ui.login(mesh.token)
        search(ui, parent)
        reply = ui.page.locator(f'#trail li.reply[data-event="{cut}"]')
        reply.locator(".unstored:has-text('not stored')").wait_for()
        reply.locator('li.route[data-subscription="function:echo"] .outcome.dead-lettered').wait_for()
        assert "reply hop limit 16 reached" in reply.inner_text()
        ui.shot("trace-loop-cut")
        search(ui, cut)   # looked up itself, it says what it answered
        ui.page.wait_for_selector(f'#trail .trail-entry[data-event="{cut}"] .trail-head:has-text("not stored")')
        assert parent in ui.page.inner_text("#trail .trail-head")
        assert ui.dialogs == [] and ui.csp_errors == []
    finally:
        ui.close()


def test_a_read_session_sees_no_replay_buttons(browser, dashboard_mesh, tmp_path):
    mesh, _ = dashboard_mesh
    made = mesh.api("POST", "/v1/tokens", json={"name": "viewer", "scope": "read"}).json()
    send(mesh, "com.example.picky", "doomed-1")
    wait_for(lambda: letters_of(mesh, "doomed-1"), 20, message="the dead letter")
    ui = Page(browser, mesh, tmp_path / "screenshots-read")
    try:
        ui.login(made["token"])
        ui.page.locator("#dead-letters tbody tr").filter(has_text="doomed-1").wait_for()
        ui.page.wait_for_selector("#who:has-text('token:viewer (read)')")
        assert ui.page.locator("button.replay, #replay-all, #purge").count() == 0
        refused = ui.page.evaluate("""async () => {
            const session = await (await fetch('/ui/session')).json();
            const answer = await fetch('/v1/dead-letters/replay', {method: 'POST',
                headers: {'content-type': 'application/json', 'x-csrf-token': session.csrf},
                body: JSON.stringify({ids: [1]})});
            return answer.status;
        }""")
        assert refused == 403
        ui.shot("read-session")
    finally:
        ui.close()


def test_live_streams_are_bounded_and_give_their_place_back_when_the_client_goes(dashboard_mesh):
    from fmesh.deploy.live import MAX_LIVE

    mesh, _ = dashboard_mesh
    headers = {"authorization": f"Bearer {mesh.token}"}
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=10) as http, contextlib.ExitStack() as streams:
        first = streams.enter_context(http.stream("GET", "/ui/live"))
        assert first.headers["content-type"].startswith("text/event-stream")
        lines = first.iter_lines()
        data = next(line for line in lines if line.startswith("data: "))
        assert {f["name"] for f in json.loads(data.removeprefix("data: "))["functions"]} == {"greeter", "picky", "echo"}

        def the_other_places_taken() -> bool:
            """All MAX_LIVE - 1 others opened; else those opened are given back, for a page
            of an earlier test may still hold a place (its browser closes its connections
            in its own time)."""
            with contextlib.ExitStack() as attempt:
                if all(attempt.enter_context(http.stream("GET", "/ui/live")).status_code == 200
                       for _ in range(MAX_LIVE - 1)):
                    streams.enter_context(attempt.pop_all())
                    return True
            return False

        wait_for(the_other_places_taken, 20, message=f"{MAX_LIVE} live streams open at once")
        full = http.get("/ui/live")
        assert full.status_code == 503 and "live streams are open" in full.json()["error"]
    # every client went: the mesh notices at its next message and frees their places

    def a_place_again() -> bool:
        with httpx.stream("GET", mesh.url + "/ui/live", headers=headers, timeout=10) as again:
            return again.status_code == 200

    wait_for(a_place_again, 20, message="the live streams' places given back")
