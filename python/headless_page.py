#!/usr/bin/env python3
"""Drives a page in headless Chromium over the DevTools protocol (standard library only).

Loads URL, waits (bounded) until the JavaScript expression --wait-for is truthy, then prints
the JSON value of --eval on stdout and/or writes a PNG screenshot. The protocol runs over
--remote-debugging-pipe (Chromium reads commands on fd 3, answers on fd 4, messages end with
NUL), so no port, no websocket and no PyPI package is involved.

Used by tests/cli/chat_page.sh, and to make docs/images/chat-page.png:
  python3 python/headless_page.py 'http://127.0.0.1:8080/?q=Hello' \
      --wait-for 'document.body.dataset.replies == 1' --screenshot chat.png
Exit status: 0 done, 1 the page did not get there in --timeout seconds or Chromium failed.
"""
import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, chromium, user_data_dir, window_size, log):
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()

        def fds():  # in the child: the command pipe on 3, the answer pipe on 4
            a, b = os.dup(cmd_r), os.dup(res_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--mute-audio",
                "--hide-scrollbars", "--remote-debugging-pipe",
                f"--user-data-dir={user_data_dir}", f"--window-size={window_size}",
                "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     preexec_fn=fds, pass_fds=(3, 4))
        os.close(cmd_r)
        os.close(res_w)
        self._buf = b""
        self._next = 0
        self.events = []  # protocol events seen so far (method, params)

    def _read_message(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from Chromium")
            ready, _, _ = select.select([self._res_r], [], [], left)
            if ready:
                chunk = os.read(self._res_r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (status {self.proc.poll()})")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=30):
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self._next:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append((m["method"], m.get("params", {})))

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._res_r)


def page_errors(events):
    out = []
    for method, p in events:
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(d.get("exception", {}).get("description") or d.get("text", "?"))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning"):
            args = p.get("args", [])
            out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--wait-for", default="true",
                    help="JavaScript expression to wait for (truthy)")
    ap.add_argument("--eval", help="JavaScript expression whose JSON value is printed on stdout")
    ap.add_argument("--screenshot", help="write a PNG of the viewport here")
    ap.add_argument("--window-size", default="1000,700")
    ap.add_argument("--timeout", type=float, default=20, help="seconds to wait for --wait-for")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "chromium"))
    ap.add_argument("--log", help="Chromium's stdout and stderr go here (default: discarded)")
    ap.add_argument("--user-data-dir",
                    help="a throwaway profile directory (default: a new one in $TMPDIR)")
    a = ap.parse_args()

    tmp = a.user_data_dir or tempfile.mkdtemp(prefix="headless_page.")
    log = open(a.log, "ab") if a.log else subprocess.DEVNULL
    b = Browser(a.chromium, tmp, a.window_size, log)
    status = 1
    try:
        targets = b.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        s = b.call("Target.attachToTarget",
                   {"targetId": page["targetId"], "flatten": True})["sessionId"]
        b.call("Runtime.enable", session=s)
        b.call("Page.enable", session=s)
        w, h = (int(x) for x in a.window_size.split(","))
        b.call("Emulation.setDeviceMetricsOverride",
               {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False}, session=s)
        nav = b.call("Page.navigate", {"url": a.url}, session=s)
        if nav.get("errorText"):
            raise RuntimeError(f"navigating to {a.url}: {nav['errorText']}")

        def evaluate(expr):
            r = b.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=s)
            if "exceptionDetails" in r:
                d = r["exceptionDetails"]
                what = d.get("exception", {}).get("description") or d.get("text")
                raise RuntimeError(f"{expr}: {what}")
            return r["result"].get("value")

        deadline = time.monotonic() + a.timeout
        while True:
            try:
                if evaluate(f"!!({a.wait_for})"):
                    break
            except RuntimeError:  # e.g. the page is still loading; retried until the deadline
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"'{a.wait_for}' still false after {a.timeout:g} s")
            time.sleep(0.1)
        if a.eval:
            print(json.dumps(evaluate(a.eval)))
        if a.screenshot:
            png = b.call("Page.captureScreenshot", {"format": "png"}, session=s)["data"]
            with open(a.screenshot, "wb") as f:
                f.write(base64.b64decode(png))
        status = 0
    except (TimeoutError, RuntimeError, StopIteration, KeyError) as e:
        print(f"headless_page: {type(e).__name__}: {e}", file=sys.stderr)
        for err in page_errors(b.events):
            print(f"headless_page: page: {err}", file=sys.stderr)
    finally:
        b.close()
        if not a.user_data_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
