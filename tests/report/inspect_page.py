#!/usr/bin/env python3
"""Opens an HTML page in a real headless Chromium and prints, as JSON, what the browser made of
it: the access report's charts (series names and their number of points, legend, marks), the
caller table as rendered text, its size on screen, and every console message, page error and
browser log entry (a Content-Security-Policy violation among them).

Used by tests/e2e/tests/audit_html_report.rs; standard library only. Chromium is driven over
the DevTools protocol on a pipe (`--remote-debugging-pipe`: file descriptors 3 and 4, messages
separated by NUL), so neither chromedriver nor a WebSocket client nor a TCP port is needed.

    inspect_page.py PAGE.html [--chromium PATH]

Chromium: --chromium, else $KEYWARD_CHROMIUM, else /usr/lib/chromium/chromium (Debian's binary,
without the wrapper script), else `chromium` on PATH.
"""

import argparse
import json
import os
import pathlib
import select
import shutil
import subprocess
import sys
import tempfile
import time

TIMEOUT_S = 60

# What the test reads from the page, evaluated in it after the load event.
FACTS = r"""
(() => {
  const text = (e) => e ? e.textContent : null;
  const chart = (id) => {
    const svg = document.getElementById(id);
    if (!svg) return null;
    const box = svg.getBoundingClientRect();
    return {
      width: box.width,
      height: box.height,
      series: [...svg.querySelectorAll('g.series')].map((g) => {
        const line = g.querySelector('polyline');
        return {
          name: g.dataset.name,
          points: line ? line.points.numberOfItems : 0,
          drawn_width: line ? line.getBBox().width : 0,
        };
      }),
      legend: [...svg.querySelectorAll('g.legend-series')].map((g) => g.dataset.name),
      marks: [...svg.querySelectorAll('g.mark')].map((g) => ({
        kind: g.dataset.kind,
        seq: Number(g.dataset.seq),
        x: g.querySelector('line').getBBox().x,
      })),
      legend_marks: [...svg.querySelectorAll('g.legend-mark')].map((g) => g.dataset.kind),
    };
  };
  const cells = (tr) => Object.fromEntries(
    [...tr.querySelectorAll('td[data-col]')].map((td) => [td.dataset.col, td.innerText]));
  return {
    title: document.title,
    scripts: document.querySelectorAll('script').length,
    body_text_length: document.body ? document.body.innerText.length : 0,
    charts: { purpose: chart('chart-purpose'), caller: chart('chart-caller') },
    rows: [...document.querySelectorAll('#callers tbody tr')].map(cells),
    totals: [...document.querySelectorAll('#callers tfoot tr')].map(cells),
    verification: {
      ok: document.querySelector('#verification')?.dataset.ok ?? null,
      checkpoint_seq: Number(document.querySelector('#checkpoint')?.dataset.seq),
      checkpoint_key_id: document.querySelector('#checkpoint')?.dataset.keyId ?? null,
      text: text(document.querySelector('#verification')),
    },
    timeline_rows: [...document.querySelectorAll('#marks tbody tr')].map((tr) => tr.dataset.kind),
  };
})()
"""


class Browser:
    def __init__(self, chromium):
        self.profile = tempfile.TemporaryDirectory(prefix="keyward-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def fds():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                # The tests run as root in CI containers, where the sandbox cannot start; the
                # page is our own file.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-pipe",
                f"--user-data-dir={self.profile.name}",
                "about:blank",
            ],
            pass_fds=(3, 4),
            preexec_fn=fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []
        self.deadline = time.monotonic() + TIMEOUT_S

    def _read(self):
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_chrome], [], [], left)[0]:
                raise RuntimeError(f"Chromium did not answer within {TIMEOUT_S} s")
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                self.stderr.seek(0)
                raise RuntimeError(
                    "Chromium closed the DevTools pipe: "
                    + self.stderr.read().decode(errors="replace")[-2000:]
                )
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def wait_for(self, predicate):
        while True:
            message = self._read()
            if predicate(message):
                return message
            self.events.append(message)

    def send(self, method, params=None, session=None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m: m.get("id") == self.next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.profile.cleanup()


def console_messages(events):
    """Every console call, uncaught exception and browser log entry, as {level, text}."""
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            out.append({"level": params.get("type"), "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.append({"level": "exception", "text": details.get("exception", {}).get("description") or details.get("text")})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            out.append({"level": entry.get("level"), "text": entry.get("text"), "source": entry.get("source")})
    return out


def chromium_path(given):
    for candidate in (given, os.environ.get("KEYWARD_CHROMIUM"), "/usr/lib/chromium/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("chromium")
    if not found:
        sys.exit("no Chromium: install Debian's chromium package (scripts/test does) or set KEYWARD_CHROMIUM")
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("page")
    parser.add_argument("--chromium")
    args = parser.parse_args()
    url = pathlib.Path(args.page).resolve().as_uri()
    browser = Browser(chromium_path(args.chromium))
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            browser.send(domain, session=session)
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired")
        result = browser.send(
            "Runtime.evaluate",
            {"expression": FACTS, "returnByValue": True},
            session=session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"reading the page failed: {result['exceptionDetails']}")
        facts = result["result"]["value"]
        version = browser.send("Browser.getVersion")["product"]
    finally:
        browser.close()
    facts["browser"] = version
    facts["console"] = console_messages(browser.events)
    json.dump(facts, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
