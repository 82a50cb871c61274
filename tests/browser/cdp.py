"""A minimal Chrome DevTools Protocol driver for Debian's headless Chromium, over aiohttp's websocket client.

No Playwright and no downloaded browser: it starts the system /usr/bin/chromium with a throw-away profile, opens
one page, and exposes what the browser tests need: evaluate JavaScript, click, screenshot, and every console
message, page exception and browser log entry seen.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-extensions", "--mute-audio", "--hide-scrollbars", "--remote-debugging-port=0"]


class CDPError(RuntimeError):
    pass


@dataclass
class LogEntry:
    kind: str  # "console", "exception" or "log"
    level: str  # console type / log level ("error", "warning", "log", ...)
    text: str
    url: str = ""

    def __str__(self) -> str:
        return f"[{self.kind}:{self.level}] {self.text}" + (f" ({self.url})" if self.url else "")


def _describe(arg: dict) -> str:
    if "value" in arg:
        return arg["value"] if isinstance(arg["value"], str) else json.dumps(arg["value"])
    preview = arg.get("preview")
    if preview and preview.get("type") == "object" and preview.get("subtype") not in ("error", "array"):
        # A logged plain object ({url, message, ...}): its fields, not just "Object", so a test can tell which.
        fields = ", ".join(f"{p['name']}: {p.get('value', p.get('type'))}" for p in preview.get("properties", []))
        return "{" + fields + (", …" if preview.get("overflow") else "") + "}"
    return arg.get("description") or arg.get("unserializableValue") or arg.get("type", "?")


@dataclass
class Page:
    ws: aiohttp.ClientWebSocketResponse
    target_id: str = ""
    entries: list[LogEntry] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _pending: dict = field(default_factory=dict)
    _reader: asyncio.Task | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._on_event(data["method"], data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CDPError("the browser closed the connection"))

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(_describe(a) for a in params.get("args", []))
            frame = (params.get("stackTrace") or {}).get("callFrames") or [{}]
            self.entries.append(LogEntry("console", params.get("type", "log"), text, frame[0].get("url", "")))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = (details.get("exception") or {}).get("description") or details.get("text", "")
            self.entries.append(LogEntry("exception", "error", text, details.get("url", "")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.entries.append(LogEntry("log", entry.get("level", ""), entry.get("text", ""), entry.get("url", "")))

    async def send(self, method: str, timeout: float = 60, **params) -> dict:
        message_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self.ws.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        answer = await asyncio.wait_for(future, timeout)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def evaluate(self, expression: str, timeout: float = 60):
        """The JSON value of `expression` (awaited if it is a promise); a thrown error raises CDPError."""
        result = await self.send("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                                 returnByValue=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError((details.get("exception") or {}).get("description") or details.get("text"))
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.25):
        """Poll until `expression` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression, timeout=max(timeout, 60))  # a page busy starting answers late
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for: {expression}")
            await asyncio.sleep(interval)

    async def click(self, x: float, y: float) -> None:
        """A real left click at viewport CSS pixel (x, y): move, press, release."""
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1,
                            clickCount=1)

    async def screenshot(self, path: Path) -> Path:
        result = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path


class Chromium:
    """`async with Chromium(profile) as browser: page = await browser.open(url)`; stops the browser by its PID."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000, executable: str = CHROMIUM):
        self.profile, self.width, self.height, self.executable = Path(profile), width, height, executable
        self.process: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None
        self.endpoint = ""
        self.version: dict = {}
        self.pages: list[Page] = []

    async def __aenter__(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        args = [self.executable, *FLAGS, f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        self.log_path = self.profile.parent / "chromium.log"
        with open(self.log_path, "w") as log:
            # Its own process group: at the end every helper process it forked is stopped with it.
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
                if self.process.poll() is not None:
                    log = self.log_path.read_text()[-2000:]
                    raise CDPError(f"chromium exited with {self.process.returncode}: {log}")
                if time.monotonic() > deadline:
                    raise TimeoutError("chromium did not open its DevTools port within 60 s")
                await asyncio.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            self.endpoint = f"http://127.0.0.1:{port}"
            self.session = aiohttp.ClientSession()
            async with self.session.get(f"{self.endpoint}/json/version") as response:
                self.version = await response.json()
        except BaseException:
            self.stop()
            raise
        return self

    async def open(self, url: str) -> Page:
        """A new tab with console, exception and log capture on, sized to the window, navigated to `url`."""
        async with self.session.put(f"{self.endpoint}/json/new?about:blank") as response:
            target = await response.json()
        ws = await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws, target["id"])
        page.start()
        self.pages.append(page)
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        await page.send("Page.navigate", url=url)
        return page

    async def close_pages(self) -> None:
        """Close every open tab (a page left open keeps running its scripts, and the next tests share the CPU)."""
        for page in self.pages:
            await page.ws.close()
            if page._reader is not None:
                await asyncio.gather(page._reader, return_exceptions=True)
            try:
                async with self.session.get(f"{self.endpoint}/json/close/{page.target_id}") as response:
                    await response.read()
            except aiohttp.ClientError:
                pass  # the browser is gone already (stop() below cleans up)
        self.pages.clear()

    async def __aexit__(self, *exc) -> None:
        await self.close_pages()
        if self.session is not None:
            await self.session.close()
        self.stop()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        try:  # helpers (renderer, GPU, zygote) left in the group this browser started
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
