"""Headless Chromium driven over the DevTools protocol (Debian's chromium; ``make test`` installs it).

Enough of CDP to open a page of a real api-server, wait for a script condition,
read values out of it (frames included, same origin) and take a screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect


class Browser:
    """``slack``: how many times slower than this machine unloaded the one it runs on may be (the tests'
    SLACK): the renderer of a heavy page on a one-CPU guest beside CPU hogs was seen busy for over 60 s,
    with every DevTools call waiting for it."""

    def __init__(self, tmp: Path, width: int = 1400, height: int = 900, slack: float = 1) -> None:
        #: seconds a DevTools call waits for its answer, unless told otherwise
        self.wait = 60 * slack
        chromium = shutil.which("chromium")
        if chromium is None:
            pytest.fail("Debian's chromium is not installed: run `make test` (it installs it) or "
                        "`apt-get install -y chromium`")
        profile = tmp / "chromium-profile"
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as resp:
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20,
                                                   open_timeout=10))
        self.ids = itertools.count(1)

    def call(self, method: str, *, within: float | None = None, **params: Any) -> dict:
        """Send one DevTools command and wait ``within`` seconds (default :attr:`wait`) for its answer."""
        ident = next(self.ids)
        within = self.wait if within is None else within
        deadline = time.monotonic() + within
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not answer {method} in {within:.0f} s")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str) -> None:
        """Navigate, and return once the new document has replaced the old one (a mark left on the old
        window is gone): a condition waited for next is never met by the page before."""
        self.evaluate("window.__oomlessLeft = true")
        self.call("Page.navigate", url=url)
        self.wait_for("!window.__oomlessLeft", timeout=self.wait)

    def evaluate(self, expression: str, within: float | None = None) -> Any:
        got = self.call("Runtime.evaluate", within=within, expression=expression, returnByValue=True)
        if "exceptionDetails" in got:
            return None
        return got["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Poll ``expression`` until it is truthy; returns its value.  A page still loading keeps the
        renderer busy and each evaluation waiting: one may take the whole of what is left of ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression, within=max(self.wait, deadline - time.monotonic()))
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never made {expression!r} true")
            time.sleep(0.3)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
