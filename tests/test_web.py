"""The search page in a real browser: Debian's headless Chromium, driven over the DevTools protocol."""
import itertools
import json
import shutil
import subprocess
import time
import urllib.request

import pytest
from _searchkit import PaletteEncoder, png_bytes, serving, write_catalog

from catalogclip.catalog.schema import read_jsonl
from catalogclip.search.build import BuildOptions, build_index
from catalogclip.search.engine import SearchEngine
from catalogclip.search.service import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
VOCABS = {"brand": ["Puma", "Diesel"], "colour": ["Black", "Red", "Green", "Blue"]}


@pytest.fixture()
def server(tmp_path):
    """The service on a free loopback port, in a thread; stopped at the end."""
    root = tmp_path / "shop"
    index = build_index(PaletteEncoder(), read_jsonl(write_catalog(root)), tmp_path / "idx", BuildOptions(progress=False))
    with serving(create_app(SearchEngine(index, PaletteEncoder(vocabs=VOCABS)))) as url:
        yield url


class Browser:
    """Just enough of the Chrome DevTools protocol: commands, page JS, waiting on a condition."""

    def __init__(self, profile):
        import websocket

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        port = self._devtools_port()
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + 30
        for line in self.process.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            if "DevTools listening on" in line:
                return int(line.split("ws://127.0.0.1:")[1].split("/")[0])
            if time.monotonic() > deadline:
                break
        raise RuntimeError("chromium did not start its DevTools server")

    def send(self, method, **params):
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for: {expression}\npage: {self.js('document.body.innerText')}")

    def close(self):
        self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture()
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


CARD_TEXTS = "[...document.querySelectorAll('#results .card .attrs')].map(e => e.textContent)"


def test_search_filter_and_upload_in_the_browser(server, browser, tmp_path):
    browser.send("Page.enable")
    browser.send("Page.navigate", url=server + "/")
    browser.wait_for("document.querySelectorAll('#facets input[type=checkbox]').length > 0")
    assert browser.js("[...document.querySelectorAll('#tree .node')].map(n => n.dataset.path)")[:2] == ["Apparel", "Apparel > Bottomwear"]

    # type a query and press Enter
    browser.js("document.getElementById('q').focus()")
    browser.send("Input.insertText", text="black puma shoes")
    for kind in ("keyDown", "keyUp"):
        browser.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13, text="\r")
    browser.wait_for("document.querySelectorAll('#results .card').length === 12")
    assert browser.js(CARD_TEXTS)[:2] == ["Puma · Black", "Puma · Black"]
    chips = browser.js("[...document.querySelectorAll('#entities .chip')].map(c => c.textContent)")
    assert chips == ["colour Black", "brand Puma", "category Shoes"]
    assert "for “black puma shoes”" in browser.js("document.getElementById('status').textContent")

    # apply a facet filter: only Diesel products remain
    browser.js("document.querySelector('#facets input[data-field=brand][value=Diesel]').click()")
    browser.wait_for(f"{CARD_TEXTS}.length === 6 && {CARD_TEXTS}.every(t => t.startsWith('Diesel'))")
    assert browser.js("document.querySelector('#facets input[value=Diesel]').checked") is True

    # upload an image: the green Diesel products come first, the filter still applies
    upload = tmp_path / "green.png"
    upload.write_bytes(png_bytes("green", 32))
    document = browser.send("DOM.getDocument")
    node = browser.send("DOM.querySelector", nodeId=document["root"]["nodeId"], selector="#image-input")
    browser.send("DOM.setFileInputFiles", files=[str(upload)], nodeId=node["nodeId"])
    browser.wait_for("document.getElementById('status').textContent.includes('your image')")
    assert browser.js(CARD_TEXTS)[:2] == ["Diesel · Green", "Diesel · Green"]
    assert browser.js("document.getElementById('query-image').hidden") is False
    # the result images are really served and decoded
    browser.wait_for("[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth === 8)")

    # a bad query shows the service's message instead of breaking the page
    browser.js("document.getElementById('q').value = 'x'.repeat(2000)")
    browser.js("document.getElementById('search-button').click()")
    assert "at most 1000" in browser.wait_for("!document.getElementById('error').hidden && document.getElementById('error').textContent")

    shot = browser.send("Page.captureScreenshot", format="png")["data"]
    assert len(shot) > 1000


SIDES = "[...document.querySelectorAll('#results .card')].map(c => [...c.querySelectorAll('.side')].map(s => s.dataset.side).join('+'))"
CHECKED_MODE = "document.querySelector('#mode input:checked').value"


def test_the_url_holds_the_search_state(server, browser):
    from urllib.parse import urlencode

    browser.send("Page.enable")
    link = "/?" + urlencode({"q": "red shoes", "mode": "lexical", "filters": json.dumps({"brand": ["Puma"]})})
    browser.send("Page.navigate", url=server + link)
    # a shared link restores the query, the mode and the filters, and runs the search
    browser.wait_for(f"{SIDES}.length === 2")
    assert browser.js("document.getElementById('q').value") == "red shoes"
    assert browser.js(CHECKED_MODE) == "lexical"
    assert browser.js("document.querySelector('#facets input[data-field=brand][value=Puma]').checked") is True
    assert browser.js(SIDES) == ["lexical", "lexical"] and browser.js(CARD_TEXTS) == ["Puma · Red"] * 2

    # switching the mode searches again and the URL follows
    browser.js("document.querySelector('#mode input[value=vector]').click()")
    browser.wait_for("new URLSearchParams(location.search).get('mode') === 'vector'")
    browser.wait_for(f"{SIDES}.length === 6 && {SIDES}.every(s => s === 'vector')")  # every Puma product
    params = browser.js("Object.fromEntries(new URLSearchParams(location.search))")
    assert params == {"q": "red shoes", "mode": "vector", "filters": '{"brand":["Puma"]}'}

    # a reload keeps it; going back returns to the lexical search
    browser.send("Page.reload")
    browser.wait_for(f"{SIDES}.length === 6 && {CHECKED_MODE} === 'vector'")
    browser.js("history.back()")
    browser.wait_for(f"{CHECKED_MODE} === 'lexical' && {SIDES}.length === 2")
    assert browser.js("location.search").count("mode=lexical") == 1

    # hybrid hits say which side(s) found them; a category click is a link too
    browser.js("document.querySelector('#mode input[value=hybrid]').click()")
    browser.wait_for(f"{SIDES}.length === 6 && {SIDES}.filter(s => s === 'vector+lexical').length === 2")
    # a recognised category is a chip that filters to its subtree
    browser.js("document.querySelector('#entities .chip[data-group=category]').click()")
    browser.wait_for("JSON.parse(new URLSearchParams(location.search).get('filters')).category?.[0] === 'Footwear > Shoes'")
    browser.wait_for(f"{SIDES}.length === 2")
    browser.js("document.querySelector('#tree .node[data-path=\"Footwear\"]').click()")
    browser.wait_for("new URLSearchParams(location.search).get('category') === 'Footwear'")
    assert "q=" not in browser.js("location.search")


def test_a_corrected_query_says_so_and_can_be_searched_as_typed(server, browser):
    browser.send("Page.enable")
    browser.send("Page.navigate", url=server + "/?q=diesl+jeans&mode=lexical")
    # the catalog has no "diesl": the page searches "diesel jeans" and says so
    browser.wait_for("document.getElementById('spelling')?.hidden === false")
    assert browser.js("document.getElementById('spelling').textContent") == "Showing results for diesel jeans. Search instead for diesl jeans"
    browser.wait_for(f"{CARD_TEXTS}.length > 2 && {CARD_TEXTS}.slice(0, 2).every(t => t.startsWith('Diesel'))")  # Diesel's jeans first
    # turning the correction down searches the text as typed: every pair of jeans, and a shareable URL
    browser.js("document.querySelector('#spelling button').click()")
    browser.wait_for("new URLSearchParams(location.search).get('spell') === '0'")
    browser.wait_for(f"document.getElementById('spelling').hidden && {CARD_TEXTS}.length === 4 && {CARD_TEXTS}.some(t => t.startsWith('Puma'))")
    assert "as typed" in browser.js("document.getElementById('status').textContent")
    # a new query is corrected again
    browser.js("document.getElementById('q').value = 'pumma jeans'")
    browser.js("document.getElementById('search-form').requestSubmit()")
    browser.wait_for("!document.getElementById('spelling').hidden")
    assert browser.js("new URLSearchParams(location.search).get('spell')") is None


def test_typing_fills_the_search_box_suggestions(server, browser):
    browser.send("Page.enable")
    browser.send("Page.navigate", url=server + "/")
    browser.wait_for("document.querySelectorAll('#facets input[type=checkbox]').length > 0")  # the page's script has started
    browser.js("document.getElementById('q').focus()")
    browser.send("Input.insertText", text="diesel j")
    options = "[...document.querySelectorAll('#suggestions option')].map(o => o.value)"
    browser.wait_for(f"{options}.length > 0")
    assert browser.js(options)[0] == "diesel Jeans"
    assert browser.js("document.querySelector('#suggestions option').label") == "category · 4"
