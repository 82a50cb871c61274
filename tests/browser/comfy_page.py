"""The ComfyUI page as the browser tests see it: wait for the app, load workflows, read nodes, click widgets, and
tell the page's own errors from the closed network's noise."""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from browser.cdp import Chromium, LogEntry, Page

EXTENSION = "sonic.portrait"
CLICK_PAUSE = 0.4  # > litegraph's 300 ms double-click window, so two clicks stay two clicks

# Set before the app starts: the "try Nodes 2.0" banner dismissed, as a returning user has it.
PRELOAD = "try { localStorage.setItem('vueNodesBannerDismissed', 'true') } catch (e) {}"

# Read a node's widgets as plain JSON (litegraph objects hold cycles).
NODE_STATE = """
(id) => {
  const node = app.graph.getNodeById(id);
  if (!node) return null;
  return {id: node.id, type: node.type, comfyClass: node.comfyClass, pos: [...node.pos], size: [...node.size],
    widgets: (node.widgets || []).map(w => ({name: w.name, type: w.type, value: w.value ?? null,
      label: w.label ?? null, disabled: !!w.disabled, serialize: w.serialize !== false,
      promptSerialize: w.options?.serialize !== false, drawn: w.last_y !== undefined, y: w.y ?? null,
      lines: w.lines ?? null, marker: w.marker ?? null,
      min: w.options?.min ?? null, max: w.options?.max ?? null,
      linked: (node.inputs || []).some(i => i.widget?.name === w.name && i.link != null)}))};
}
"""


# Frontend 1.58.1's setting for its "Nodes 2.0" view: nodes drawn as Vue components over the canvas, each widget in
# its own element; a widget the extension draws itself gets a small canvas of its own there.
NODES2_SETTING = "Comfy.VueNodes.Enabled"

# Which texts each canvas shows now: fillText is recorded per canvas, and resizing a canvas (which clears it, and
# which the Nodes 2.0 view does before each repaint of a widget) starts its list afresh.
TEXT_PROBE = """(() => {
  if (window.sonicTextProbe) return true;
  window.sonicTextProbe = true;
  const fillText = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
    (this.canvas.sonicTexts ??= []).push(String(text));
    return fillText.call(this, text, ...rest);
  };
  for (const side of ['width', 'height']) {
    const own = Object.getOwnPropertyDescriptor(HTMLCanvasElement.prototype, side);
    Object.defineProperty(HTMLCanvasElement.prototype, side, {...own, set(value) {
      this.sonicTexts = [];
      own.set.call(this, value);
    }});
  }
  return true;
})()"""


async def open_comfy(browser: Chromium, url: str, timeout: float = 120, nodes2: bool | None = None) -> Page:
    """A tab on the server's page once the app, its node definitions and this pack's extension are ready.
    `nodes2` switches frontend 1.58.1's Nodes 2.0 view on or off (a saved setting: every later tab gets it too)."""
    page = await browser.open("about:blank")
    await page.send("Page.addScriptToEvaluateOnNewDocument", source=PRELOAD)
    await page.send("Page.navigate", url=url)
    await page.wait_for(f"""!!(window.app && window.app.graph && window.app.canvas
        && LiteGraph.registered_node_types['SonicMotionBuckets']
        && app.extensions.some(e => e.name === '{EXTENSION}'))""", timeout=timeout)
    if nodes2 is not None:
        await page.evaluate(TEXT_PROBE)
        await page.evaluate(f"app.extensionManager.setting.set('{NODES2_SETTING}', {json.dumps(nodes2)})"
                            ".then(() => true)")
    return page


async def frontend_version(page: Page) -> str:
    return await page.wait_for("window.__COMFYUI_FRONTEND_VERSION__", timeout=30)


async def wait_for_nodes2(page: Page, node_ids: list) -> None:
    """Until the Nodes 2.0 view shows each node as an element with its widgets."""
    await page.wait_for(f"""({json.dumps([str(i) for i in node_ids])}).every(id =>
        document.querySelector(`[data-node-id="${{id}}"] [data-widget-name]`))""", timeout=60)


async def nodes2_widget_canvas(page: Page, node_id, widget_name: str) -> dict | None:
    """The canvas the Nodes 2.0 view shows for a widget the extension draws: the texts on it (TEXT_PROBE records
    them), its height and the height the widget asks for (CSS pixels); None when the view shows no such canvas."""
    return await page.evaluate(f"""(() => {{
        const canvas = document.querySelector(
          `[data-node-id="{node_id}"] [data-widget-name={json.dumps(widget_name)}] canvas`);
        const widget = app.graph.getNodeById({json.dumps(str(node_id))})?.widgets
          ?.find(w => w.name === {json.dumps(widget_name)});
        return canvas && widget ? {{texts: canvas.sonicTexts ?? [], height: canvas.clientHeight,
          wanted: widget.computeSize(canvas.clientWidth)[1]}} : null; }})()""")


async def frame_nodes(page: Page, node_ids: list[int] | None = None, zoom: float = 0.92) -> None:
    """Fit the view around the given nodes (all by default) and draw."""
    ids = "app.graph._nodes.map(n => n.id)" if node_ids is None else json.dumps(list(node_ids))
    await page.evaluate(f"""(() => {{
        const nodes = ({ids}).map(id => app.graph.getNodeById(id)).filter(Boolean);
        const r = nodes.map(n => n.boundingRect);
        const x0 = Math.min(...r.map(b => b[0])), y0 = Math.min(...r.map(b => b[1]));
        const x1 = Math.max(...r.map(b => b[0] + b[2])), y1 = Math.max(...r.map(b => b[1] + b[3]));
        app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {{zoom: {zoom}}});
        app.canvas.setDirty(true, true);
        app.canvas.draw(true, true);
        return true;
    }})()""")


async def load_workflow(page: Page, workflow: dict) -> None:
    """Load a UI-format workflow as a user would (new tab in the app), all of it in view and drawn."""
    await page.evaluate(f"app.loadGraphData({json.dumps(workflow)}).then(() => true)")
    await frame_nodes(page)


async def node_state(page: Page, node_id: int) -> dict:
    return await page.evaluate(f"({NODE_STATE})({int(node_id)})")


async def graph_summary(page: Page) -> list[dict]:
    return await page.evaluate(f"app.graph._nodes.map(n => ({NODE_STATE})(n.id))")


async def focus_node(page: Page, node_id: int, scale: float = 1.0) -> None:
    """Zoom to `scale` with the node in the middle of the canvas, and draw it."""
    await page.evaluate(f"""(() => {{
        const node = app.graph.getNodeById({int(node_id)});
        app.canvas.ds.scale = {scale};
        app.canvas.centerOnNode(node);
        app.canvas.draw(true, true);
        return true; }})()""")


async def widget_point(page: Page, node_id: int, widget_name: str, fraction: float = 0.5) -> tuple[float, float]:
    """Viewport CSS pixel of a widget, `fraction` of the way along it (litegraph's widget margins: 15 px)."""
    point = await page.evaluate(f"""(() => {{
        const node = app.graph.getNodeById({int(node_id)});
        const w = node.widgets.find(w => w.name === {json.dumps(widget_name)});
        const width = w.width || node.size[0];
        const H = w.computedHeight ? w.computedHeight - 4 : LiteGraph.NODE_WIDGET_HEIGHT;
        const gx = node.pos[0] + 15 + {fraction} * (width - 30);
        const gy = node.pos[1] + w.y + H / 2;
        const [cx, cy] = app.canvas.ds.convertOffsetToCanvas([gx, gy]);
        const rect = app.canvas.canvas.getBoundingClientRect();
        const dpr = window.devicePixelRatio || 1;
        return [rect.left + cx / dpr, rect.top + cy / dpr];
    }})()""")
    return point[0], point[1]


async def click_widget(page: Page, node_id: int, widget_name: str, fraction: float = 0.5) -> None:
    x, y = await widget_point(page, node_id, widget_name, fraction)
    await page.click(x, y)
    await asyncio.sleep(CLICK_PAUSE)


async def pick_combo(page: Page, node_id: int, widget_name: str, option: str) -> None:
    """Open a combo widget's menu with a click and click the option in the menu litegraph shows."""
    await click_widget(page, node_id, widget_name)
    rect = await page.wait_for(f"""(() => {{
        const items = [...document.querySelectorAll('.litecontextmenu .litemenu-entry')];
        const item = items.find(el => el.textContent.trim() === {json.dumps(option)});
        if (!item) return null;
        const r = item.getBoundingClientRect();
        return [r.left + r.width / 2, r.top + r.height / 2];
    }})()""", timeout=10)
    await page.click(*rect)
    await asyncio.sleep(CLICK_PAUSE)


@dataclass(frozen=True)
class Ignored:
    why: str
    pattern: str


# Frontend 1.58.1 served by ComfyUI 0.3.75 (the CI runtime), with no network; each also appears with no custom node.
NEW_FRONTEND_ON_OLD_SERVER = [
    Ignored("frontend 1.58.1 reads the queue and history from the Jobs API (/api/jobs) of newer servers; "
            "ComfyUI 0.3.75 answers 404",
            r"^(\[log:error\] Failed to load resource: the server responded with a status of 404 \(Not Found\) "
            r"\(http://[^/]+/api/jobs\?[^)]*\)$"
            r"|\[console:error\] (\[Jobs API\] Error fetching jobs|Failed to fetch queue): "
            r"JobsApiError: Failed to fetch jobs: 404)"),
    Ignored("frontend 1.58.1's missing-model check asks huggingface.co about the models of its default graph "
            "(loaded at start-up); the test machine has no network",
            r"^\[log:error\] Failed to load resource: net::ERR_[A-Z_]+ \(https://huggingface\.co/"),
]


def ignored_entries(server_url: str) -> list[Ignored]:
    """Exactly what the browser tests tolerate; each one also appears with no custom node loaded at all."""
    server = re.escape(server_url.rstrip("/"))
    return [
        *NEW_FRONTEND_ON_OLD_SERVER,
        Ignored("the frontend asks the Comfy registry (api.comfy.org) about the workflow's node packs and "
                "releases; the test machine has no network",
                r"^\[log:error\] Failed to load resource: net::ERR_[A-Z_]+ \(https://api\.comfy\.org/"),
        Ignored("index.html links /user.css and the browser asks for /favicon.ico; ComfyUI serves neither",
                rf"^\[log:error\] Failed to load resource: the server responded with a status of 404 "
                rf"\(Not Found\) \({server}/(user\.css|favicon\.ico)\)$"),
        Ignored("frontend 1.32.9 start-up race: useRenderModeSetting sets LiteGraph.Canvas.MinFontSizeForLOD "
                "before the setting is registered (settingStore onChange reads setting.id of undefined)",
                r"^\[console:error\] TypeError: Cannot read properties of undefined \(reading 'id'\)\s+"
                r"at onChange \(.*\n\s+at Proxy\.set \("),
    ]


def unexpected_errors(entries: list[LogEntry], server_url: str) -> list[str]:
    """Console errors, page exceptions and error log entries not in ignored_entries, as text."""
    allowed = [re.compile(i.pattern) for i in ignored_entries(server_url)]
    errors = []
    for entry in entries:
        if entry.level not in ("error", "assert") and entry.kind != "exception":
            continue
        text = str(entry)
        if not any(p.search(text) for p in allowed):
            errors.append(text)
    return errors


def extension_warnings(entries: list[LogEntry]) -> list[str]:
    """Anything this pack's script logged (it only logs when something went wrong)."""
    return [str(e) for e in entries if "[sonic]" in e.text or "/extensions/" in e.url and "sonic" in e.url]
