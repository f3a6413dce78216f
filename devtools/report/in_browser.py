#!/usr/bin/env python3
"""Loads a page in Debian's headless Chromium and reports what a test needs to know of it.

Usage: in_browser.py PAGE.html SCREENSHOT.png [CSS_SELECTOR ...]

Chromium is driven over its DevTools pipe (`--remote-debugging-pipe`: the protocol's JSON
messages, NUL-terminated, on file descriptors 3 and 4), so nothing but the standard library
is needed. The page is loaded from a file URL; while it loads and settles the script records
every console message of level error or warning, every uncaught exception and every network
request other than the page's own. Prints one JSON object:

    {"problems": [...], "requests": [...], "elements": {selector: [{"text", "width", "height"}]},
     "title": ..., "screenshot": path}

and writes a full-page PNG screenshot to SCREENSHOT.png. Exits 2 on a usage error, 1 when
Chromium cannot be driven.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The whole inspection's deadline (the Rust test gives the script 120 s).
DEADLINE_SECONDS = 90
WIDTH = 1100


class Browser:
    """One headless Chromium, spoken to over its DevTools pipe."""

    def __init__(self) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            raise RuntimeError("chromium is not installed (scripts/setup installs Debian's package)")
        self.deadline = time.monotonic() + DEADLINE_SECONDS
        self.profile = tempfile.mkdtemp(prefix="batchline-chromium-")
        to_chrome_read, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_write = os.pipe()

        def as_fds_3_and_4() -> None:
            # Out of the way first (either may be 3 or 4 already; the copies close on exec),
            # then into place, inheritable. The script is single-threaded, so this is safe.
            read, write = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_read, from_chrome_write))
            os.dup2(read, 3)
            os.dup2(write, 4)

        try:
            self.process = self.start(binary, as_fds_3_and_4)
        except OSError:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        os.close(to_chrome_read)
        os.close(from_chrome_write)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def start(self, binary: str, as_fds_3_and_4: Any) -> subprocess.Popen:
        """Chromium, headless, in a session of its own (so its helpers are stopped with it)."""
        return subprocess.Popen(
            [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", f"--window-size={WIDTH},900", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=as_fds_3_and_4, close_fds=False, start_new_session=True,
        )

    def left(self) -> float:
        """Seconds left before the deadline; an error once it has passed."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"the page was not inspected within {DEADLINE_SECONDS} s")
        return left

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Sends a command and waits for its answer; events that come meanwhile are kept."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.receive(self.left())
            if reply is None:
                raise RuntimeError(f"no answer to {method} within {DEADLINE_SECONDS} s")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def receive(self, timeout: float) -> dict | None:
        """The next message, or None when none comes within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_chrome], [], [], left)[0]:
                return None
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, method: str, since: int) -> None:
        """Waits until an event named `method` has come after the first `since` events."""
        while not any(e.get("method") == method for e in self.events[since:]):
            event = self.receive(self.left())
            if event is None:
                raise RuntimeError(f"no {method} within {DEADLINE_SECONDS} s")
            self.events.append(event)

    def settle(self, quiet_seconds: float) -> None:
        """Keeps what comes until nothing has for `quiet_seconds`."""
        while (event := self.receive(quiet_seconds)) is not None:
            self.events.append(event)

    def close(self) -> None:
        """Closes the browser, or kills its whole session; removes its profile."""
        try:
            self.deadline = max(self.deadline, time.monotonic() + 5)
            self.send("Browser.close")
            self.process.wait(5)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        for fd in (self.to_chrome, self.from_chrome):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)


ELEMENTS = """
(selectors) => Object.fromEntries(selectors.map((selector) => [selector,
  Array.from(document.querySelectorAll(selector)).map((element) => {
    const box = element.getBoundingClientRect();
    return {text: element.innerText ?? element.textContent, width: box.width, height: box.height,
            attributes: Object.fromEntries(Array.from(element.attributes).map((a) => [a.name, a.value]))};
  })]))
"""


def evaluate(browser: Browser, session: str, expression: str) -> Any:
    """The value of `expression` in the page; an error if it threw."""
    answer = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
    if "exceptionDetails" in answer:
        raise RuntimeError(f"{expression[:60]}…: {answer['exceptionDetails'].get('text')}")
    return answer["result"].get("value")


def inspect(page: Path, screenshot: Path, selectors: list[str]) -> dict:
    browser = Browser()
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ["Page", "Runtime", "Log", "Network"]:
            browser.send(f"{domain}.enable", session=session)
        url = page.resolve().as_uri()
        before = len(browser.events)
        navigated = browser.send("Page.navigate", {"url": url}, session=session)
        if navigated.get("errorText"):
            raise RuntimeError(f"{url}: {navigated['errorText']}")
        browser.wait_for("Page.loadEventFired", since=before)
        browser.settle(1.0)
        found = evaluate(browser, session, f"({ELEMENTS})({json.dumps(selectors)})")
        title = evaluate(browser, session, "document.title")
        metrics = browser.send("Page.getLayoutMetrics", session=session)
        height = int(metrics["cssContentSize"]["height"]) + 1
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=session)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        browser.settle(0.2)
    finally:
        browser.close()
    problems, requests = [], []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            problems.append({"console": params["type"], "args": [a.get("value") for a in params.get("args", [])]})
        elif method == "Runtime.exceptionThrown":
            problems.append({"exception": params.get("exceptionDetails", {}).get("text")})
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            problems.append({"log": params["entry"].get("text"), "url": params["entry"].get("url")})
        elif method == "Network.requestWillBeSent":
            requested = params.get("request", {}).get("url", "")
            if requested != url:
                requests.append(requested)
    return {"problems": problems, "requests": requests, "elements": found, "title": title,
            "screenshot": str(screenshot)}


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        report = inspect(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
    except RuntimeError as err:
        print(f"in_browser: {err}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
