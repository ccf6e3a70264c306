"""A headless Chromium driven through chromedriver's W3C WebDriver HTTP API.

Just the four calls the browser test needs (open a session, go to a URL, run
a script, take a screenshot), over ``http.client``: no driver library, and
nothing downloaded (Debian's ``chromium`` and ``chromium-driver``).
"""

from __future__ import annotations

import base64
import http.client
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .sse_client import wait_for

#: Flags for a headless browser on a machine without network or display.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--window-size=1000,800",
]

#: Opens an ``EventSource`` and records, in ``window.eventSources[name]``, what it sees.
_LISTEN = """
const [url, name] = arguments;
window.eventSources = window.eventSources || {};
const seen = window.eventSources[name] = {opens: 0, errors: 0, data: [], readyState: 0, closed: false};
const source = new EventSource(url);
source.onopen = () => { seen.opens += 1; seen.readyState = source.readyState; };
source.onmessage = (event) => seen.data.push(event.data);
source.onerror = () => {
  seen.errors += 1;
  seen.readyState = source.readyState;
  if (source.readyState === EventSource.CLOSED) seen.closed = true;  // given up for good
};
"""


class Browser:
    def __init__(self, chromedriver: str, chromium: str, port: int) -> None:
        self.port = port
        self.profile = tempfile.TemporaryDirectory()
        self.driver = subprocess.Popen(
            [chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._driver_ready, what="chromedriver")
        options = {"binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile.name}"]}
        capabilities = {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}
        self.session = self._call("POST", "/session", {"capabilities": capabilities})["sessionId"]

    def _driver_ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status")["ready"])
        except OSError:
            return False

    def _call(self, method: str, path: str, body: object = None) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body),
                               headers={"Content-Type": "application/json"})
            answer = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        value = answer.get("value")
        if isinstance(value, dict) and "error" in value:
            raise RuntimeError(f"WebDriver {path}: {value['error']}: {value.get('message', '')[:300]}")
        return value

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def run(self, script: str, *args: object) -> Any:
        """Run ``script`` (a function body) in the page and return what it returns."""
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": list(args)})

    def run_async(self, script: str, *args: object) -> Any:
        """Run ``script``; it calls ``arguments[arguments.length - 1](value)`` when done."""
        return self._call("POST", f"/session/{self.session}/execute/async", {"script": script, "args": list(args)})

    def current_tab(self) -> str:
        """The handle of the tab scripts run in now."""
        handle: str = self._call("GET", f"/session/{self.session}/window")
        return handle

    def new_tab(self) -> str:
        """Open a blank tab and switch to it; returns its handle."""
        handle: str = self._call("POST", f"/session/{self.session}/window/new", {"type": "tab"})["handle"]
        self.switch_to(handle)
        return handle

    def switch_to(self, handle: str) -> None:
        """Run the next scripts in the tab ``handle``."""
        self._call("POST", f"/session/{self.session}/window", {"handle": handle})

    def close_tab(self) -> None:
        """Close the current tab (as a user does); switch to another before the next call."""
        self._call("DELETE", f"/session/{self.session}/window")

    def listen(self, url: str, name: str = "stream") -> None:
        """Open an ``EventSource`` on ``url`` in the page; :meth:`seen` tells what it saw."""
        self.run(_LISTEN, url, name)

    def seen(self, name: str = "stream") -> dict[str, Any]:
        """What the ``EventSource`` named ``name`` saw: opens, errors, data, readyState, closed."""
        state: dict[str, Any] = self.run("return window.eventSources[arguments[0]];", name)
        return state

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot")))

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        finally:
            self.driver.terminate()
            self.driver.wait(10)
            self.profile.cleanup()
