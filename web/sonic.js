// Sonic for ComfyUI: client-side helpers on the Sonic nodes.
//  - Sonic Motion Buckets: "auto" toggles for head_motion / expression (auto = -1 = keep the prediction), the beta
//    slider greyed out and showing the preset's value unless the preset is "custom", and a readout of the
//    predicted buckets after a run (also marked on the sliders); a slider whose curve input is connected shows
//    "from curve" and is inactive; after a run, a chart of the predicted and the used buckets over time.
//  - Sonic Sampler: a visible hint for cfg_audio.
//  - Sonic Encode Audio: duration -> frame counts after a run.
//  - Sonic Reference Image: after a run, how many faces were found and which one is animated, whether a batch was
//    cut to its first image, and the prepared size.
//  - Sonic Speakers: after a run, how many faces were found and which face (or mask) each track drives.
// Everything here is client-only: no widget added here is saved in the workflow or sent with the prompt.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const AUTO = -1; // bucket slider value meaning "use the prediction" (nodes/motion.py)
const MANUAL_DEFAULT = 32; // where a slider lands when auto is switched off and it had no manual value yet
const CUSTOM = "custom";
const GENERATION_FPS = 12.5; // Sonic generates 12.5 frames per second
const RIFE_FPS = 25; // RIFE x2 inserts one frame between each pair: 2N - 1 frames
const CFG_AUDIO_HINT = "cfg_audio: lower to ~5.5 if lips look exaggerated";

const READOUT_LINE = 16;
const READOUT_PAD = 6;

function findWidget(node, name) {
  return Array.isArray(node?.widgets) ? node.widgets.find((w) => w?.name === name) : undefined;
}

function redraw(node) {
  node?.setDirtyCanvas?.(true, true);
}

// A readout that gained lines needs a taller node (classic view) and its widgets laid out again now: the Nodes 2.0
// view sizes a widget's own canvas from that layout, which only the classic view's drawing would otherwise redo.
function fitNode(node) {
  const wanted = node?.computeSize?.();
  if (wanted && wanted[1] > node.size[1]) node.setSize?.([node.size[0], wanted[1]]);
  node?.arrange?.();
}

// Run `after(value)` once the widget's own callback (rounding, clamping) has run.
function afterCallback(widget, after) {
  const original = widget.callback;
  widget.callback = function (...args) {
    const result = typeof original === "function" ? original.apply(this, args) : undefined;
    try {
      after(widget.value);
    } catch (error) {
      console.warn("[sonic] widget sync failed", error);
    }
    return result;
  };
}

// Client-only widgets go after every saved widget: litegraph saves widgets_values by position, so a skipped
// widget in the middle would shift the values of the ones after it.
function clientOnly(widget) {
  widget.serialize = false; // not in the workflow's widgets_values
  widget.options = { ...(widget.options ?? {}), serialize: false }; // not in the API prompt
  return widget;
}

// A read-only, multi-line text drawn on the node; `setLines` replaces its content.
function addReadout(node, name, lines, { dim = false } = {}) {
  const widget = {
    type: "sonic_readout",
    name,
    value: "",
    lines: [...lines],
    dim,
    y: 0,
    options: { serialize: false },
    serialize: false,
    draw(ctx, _node, width, y) {
      const margin = 15;
      ctx.save();
      ctx.fillStyle = "rgba(0, 0, 0, 0.25)";
      ctx.beginPath();
      ctx.roundRect?.(margin, y + 2, width - 2 * margin, this.lines.length * READOUT_LINE + READOUT_PAD, 6);
      ctx.fill();
      ctx.font = "12px Arial, sans-serif";
      ctx.textAlign = "left";
      ctx.fillStyle = this.dim ? "#8a8a8a" : "#cfe3c8";
      this.lines.forEach((line, i) => {
        const baseline = y + 2 + READOUT_PAD / 2 + READOUT_LINE * (i + 0.75);
        ctx.fillText(String(line), margin + 8, baseline, width - 2 * margin - 16);
      });
      ctx.restore();
    },
    computeSize(width) {
      return [width ?? 0, this.lines.length * READOUT_LINE + READOUT_PAD + 4];
    },
    onPointerDown() {
      return true; // read-only: swallow clicks
    },
    setLines(next, { dim: nextDim = false } = {}) {
      this.lines = [...next];
      this.value = this.lines.join("\n");
      this.dim = nextDim;
      fitNode(node);
      redraw(node);
      // The Nodes 2.0 (Vue) view draws this widget on a canvas of its own and repaints it only through this hook;
      // the graph canvas redraw above is the classic view's.
      this.triggerDraw?.();
    },
  };
  widget.value = widget.lines.join("\n");
  node.addCustomWidget(widget);
  return widget;
}

function fmt(x, digits = 1) {
  const n = Number(x);
  return Number.isFinite(n) ? n.toFixed(digits) : "?";
}

// ---- the motion chart: predicted (dashed) and used (solid) buckets of both columns over time -------------------

const CHART_HEIGHT = 120;
const CHART_EMPTY_HEIGHT = READOUT_LINE + READOUT_PAD + 4;
const CHART_MARGIN = 15;
const CHART_COLUMNS = [
  { key: "motion", label: "head motion", color: "#f0a050" },
  { key: "expression", label: "expression", color: "#6cb6ff" },
];

function finiteNumbers(list) {
  return Array.isArray(list) ? list.map(Number).filter(Number.isFinite) : [];
}

// The run's chart data, or null when the message carries none (an older server, a malformed message).
function chartData(summary) {
  const seconds = finiteNumbers(summary?.seconds);
  if (seconds.length < 1) return null;
  const series = (kind) =>
    Object.fromEntries(CHART_COLUMNS.map(({ key }) => [key, finiteNumbers(summary?.[kind]?.[key])]));
  const data = { seconds, predicted: series("predicted"), used: series("used"), sources: summary?.sources ?? {} };
  const complete = ["predicted", "used"].every((kind) =>
    CHART_COLUMNS.every(({ key }) => data[kind][key].length === seconds.length));
  return complete ? data : null;
}

function drawChart(ctx, data, left, top, width, height) {
  const values = ["predicted", "used"].flatMap((kind) => CHART_COLUMNS.flatMap(({ key }) => data[kind][key]));
  const topValue = Math.max(10, Math.ceil(Math.max(...values) / 10) * 10);
  const bottomValue = Math.min(0, Math.floor(Math.min(...values) / 10) * 10); // a prediction may dip below 0
  const end = data.seconds[data.seconds.length - 1] || 1 / GENERATION_FPS;
  const plot = { left: left + 26, top: top + 27, width: width - 34, height: height - 43 }; // 2 legend lines
  const x = (t) => plot.left + (t / end) * plot.width;
  const y = (v) => plot.top + plot.height * (topValue - v) / (topValue - bottomValue);

  ctx.strokeStyle = "rgba(255, 255, 255, 0.25)";
  ctx.lineWidth = 1;
  ctx.strokeRect(plot.left, plot.top, plot.width, plot.height);
  ctx.fillStyle = "#9a9a9a";
  ctx.font = "10px Arial, sans-serif";
  ctx.textAlign = "right";
  ctx.fillText(String(topValue), plot.left - 3, plot.top + 8);
  ctx.fillText(String(bottomValue), plot.left - 3, plot.top + plot.height);
  const below = plot.top + plot.height + 11;
  ctx.textAlign = "left";
  ctx.fillText("0 s", plot.left, below);
  ctx.textAlign = "right";
  ctx.fillText(`${fmt(end, 1)} s`, plot.left + plot.width, below);
  ctx.textAlign = "center";
  ctx.fillText("solid: used   dashed: predicted", plot.left + plot.width / 2, below, plot.width - 70);

  for (const { key, color } of CHART_COLUMNS) {
    for (const kind of ["predicted", "used"]) {
      ctx.strokeStyle = color;
      ctx.lineWidth = kind === "used" ? 1.8 : 1.2;
      ctx.setLineDash(kind === "used" ? [] : [4, 3]);
      ctx.beginPath();
      data[kind][key].forEach((v, i) => {
        const px = data.seconds.length === 1 ? plot.left + plot.width / 2 : x(data.seconds[i]);
        if (i === 0) ctx.moveTo(px, y(v));
        else ctx.lineTo(px, y(v));
      });
      ctx.stroke();
    }
  }
  ctx.setLineDash([]);
  // Legend, a line per column: its colour, where its values come from, and the mean of what it uses.
  ctx.textAlign = "left";
  CHART_COLUMNS.forEach(({ key, label, color }, i) => {
    const used = data.used[key];
    const mean = used.reduce((a, b) => a + b, 0) / used.length;
    ctx.fillStyle = color;
    ctx.fillText(`${label}: ${data.sources[key] ?? "used"}, mean ${fmt(mean)}`, left + 4, top + 9 + 11 * i, width - 8);
  });
}

function addMotionChart(node) {
  const widget = {
    type: "sonic_chart",
    name: "sonic_motion_chart",
    value: "",
    data: null,
    y: 0,
    options: { serialize: false },
    serialize: false,
    draw(ctx, _node, width, y) {
      const height = this.computeSize(width)[1] - 4;
      ctx.save();
      ctx.fillStyle = "rgba(0, 0, 0, 0.25)";
      ctx.beginPath();
      ctx.roundRect?.(CHART_MARGIN, y + 2, width - 2 * CHART_MARGIN, height, 6);
      ctx.fill();
      if (this.data) {
        drawChart(ctx, this.data, CHART_MARGIN + 4, y + 4, width - 2 * CHART_MARGIN - 8, height - 4);
      } else {
        ctx.font = "12px Arial, sans-serif";
        ctx.textAlign = "left";
        ctx.fillStyle = "#8a8a8a";
        const baseline = y + 2 + READOUT_PAD / 2 + READOUT_LINE * 0.75;
        ctx.fillText("motion curves: drawn after a run", CHART_MARGIN + 8, baseline);
      }
      ctx.restore();
    },
    computeSize(width) {
      return [width ?? 0, this.data ? CHART_HEIGHT : CHART_EMPTY_HEIGHT];
    },
    onPointerDown() {
      return true; // read-only: swallow clicks
    },
    setData(data) {
      this.data = data;
      this.value = data ? `${data.seconds.length} points` : "";
      fitNode(node);
      redraw(node);
      this.triggerDraw?.(); // the Nodes 2.0 view's own canvas for this widget (see addReadout)
    },
  };
  node.addCustomWidget(widget);
  return widget;
}

// ---- Sonic Motion Buckets ---------------------------------------------------------------------------------------

// Whether the node's input `name` (a curve socket) has a link.
function inputLinked(node, name) {
  return Array.isArray(node?.inputs) && node.inputs.some((input) => input?.name === name && input.link != null);
}

function setupAutoToggle(node, sliderName) {
  const slider = findWidget(node, sliderName);
  if (!slider || findWidget(node, `${sliderName} auto`)) return null;
  const baseLabel = slider.label || sliderName;
  let lastManual = slider.value !== AUTO && Number.isFinite(slider.value) ? slider.value : MANUAL_DEFAULT;
  let syncing = false;

  const toggle = clientOnly(
    node.addWidget("toggle", `${sliderName} auto`, slider.value === AUTO, (on) => {
      if (syncing) return;
      syncing = true;
      try {
        if (on) {
          if (slider.value !== AUTO) lastManual = slider.value;
          slider.value = AUTO;
        } else if (slider.value === AUTO) {
          slider.value = lastManual;
        }
        show();
      } finally {
        syncing = false;
      }
    }, { on: "auto (prediction)", off: "fixed value" })
  );
  toggle.label = `${sliderName}: auto`;

  function show() {
    const auto = slider.value === AUTO;
    const curve = inputLinked(node, `${sliderName}_curve`); // a connected curve replaces slider and prediction
    toggle.value = auto;
    slider.label = curve ? `${baseLabel} (from curve)` : auto ? `${baseLabel} (auto)` : baseLabel;
    slider.disabled = curve;
    toggle.disabled = curve;
    redraw(node);
  }

  afterCallback(slider, (value) => {
    if (syncing) return;
    if (value !== AUTO) lastManual = value;
    show();
  });

  return {
    sync() {
      if (slider.value !== AUTO && Number.isFinite(slider.value)) lastManual = slider.value;
      show();
    },
  };
}

// A preset's label ends with the β it uses in brackets (nodes/motion.py PRESETS is the one table).
function presetBeta(label) {
  const match = /\(([0-9.]+)\)$/.exec(String(label ?? ""));
  return match ? Number(match[1]) : undefined;
}

function setupBetaPreset(node) {
  const preset = findWidget(node, "motion_preset");
  const beta = findWidget(node, "beta");
  if (!preset || !beta) return null;
  const baseLabel = beta.label || "beta";

  function sync() {
    const value = preset.value === CUSTOM ? undefined : presetBeta(preset.value);
    const custom = preset.value === CUSTOM || value === undefined;
    if (!custom && beta.value !== value) beta.value = value; // the slider shows the β the preset uses
    beta.disabled = !custom;
    beta.label = custom ? baseLabel : `${baseLabel} (from preset)`;
    redraw(node);
  }

  afterCallback(preset, sync);
  return { sync };
}

function setupMotionBuckets(node) {
  const syncs = [setupBetaPreset(node), setupAutoToggle(node, "head_motion"), setupAutoToggle(node, "expression")]
    .filter(Boolean);
  const readout = addReadout(node, "sonic_motion_readout", ["predicted buckets: shown after a run"], { dim: true });
  const chart = addMotionChart(node);
  node.sonicSync = () => syncs.forEach((s) => s.sync());
  node.sonicSync();
  // Connecting or removing a curve changes which sliders are in use.
  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function (...args) {
    const result = typeof onConnectionsChange === "function" ? onConnectionsChange.apply(this, args) : undefined;
    try {
      this.sonicSync?.();
    } catch (error) {
      console.warn("[sonic] could not show the curve inputs", error);
    }
    return result;
  };

  node.sonicOnExecuted = (output) => {
    const summary = output?.sonic_motion?.[0];
    if (!summary) return;
    const line = (label, s) => `${label} mean ${fmt(s?.mean)} (min ${fmt(s?.min)}, max ${fmt(s?.max)})`;
    readout.setLines([line("motion", summary.motion), line("expression", summary.expression)]);
    chart.setData(chartData(summary));
    // Mark the prediction on the sliders, so a fixed value can be set relative to it.
    const marks = { head_motion: summary.motion?.mean, expression: summary.expression?.mean };
    for (const [name, mean] of Object.entries(marks)) {
      const slider = findWidget(node, name);
      if (slider && Number.isFinite(Number(mean))) slider.marker = Number(mean);
    }
    redraw(node);
  };
}

// ---- Sonic Sampler ----------------------------------------------------------------------------------------------

function setupSampler(node) {
  if (!findWidget(node, "cfg_audio")) return;
  const readout = addReadout(node, "sonic_cfg_audio_hint", [CFG_AUDIO_HINT], { dim: true });
  // After a run: how it sampled (with low_vram auto, the fastest way the memory model fits into the free VRAM).
  node.sonicOnExecuted = (output) => {
    const report = output?.sonic_sampling?.[0];
    if (!report?.mode) return;
    const lines = [CFG_AUDIO_HINT, `sampled with ${report.mode}`];
    // Core's TorchCompileModel upstream: its first window includes the compile.
    if (report.compiled) lines.push(`compiled (${report.compiled}), first window ${fmt(report.first_window_seconds, 1)} s`);
    readout.setLines(lines);
  };
}

// ---- Sonic Encode Audio -----------------------------------------------------------------------------------------

function framesReadout(frames, seconds) {
  const n = Math.round(Number(frames));
  const interpolated = Math.max(2 * n - 1, 0);
  return `${fmt(seconds, 2)} s → ${n} frames at ${GENERATION_FPS} fps, ${interpolated} at ${RIFE_FPS} fps after RIFE`;
}

function setupAudioEncode(node) {
  const readout = addReadout(node, "sonic_audio_readout", ["frame count: shown after a run"], { dim: true });
  node.sonicOnExecuted = (output) => {
    const info = output?.sonic_audio?.[0];
    if (!info || !Number.isFinite(Number(info.frames))) return;
    const seconds = info.seconds ?? Number(info.frames) / GENERATION_FPS;
    readout.setLines([framesReadout(info.frames, seconds)]);
  };
}

// ---- Sonic Reference Image --------------------------------------------------------------------------------------

function faceLine(faces, face) {
  if (faces === null || faces === undefined) return "no face detector: the whole picture is animated";
  const n = Math.round(Number(faces));
  if (!(n > 0)) return "no face found: the whole picture is animated";
  if (n === 1) return "1 face found";
  const which = Number(face) > 0 ? `face ${Number(face) + 1} by size` : "the largest";
  return `${n} faces found: animating ${which}`;
}

function setupReferenceImage(node) {
  const readout = addReadout(node, "sonic_image_readout", ["faces: shown after a run"], { dim: true });
  node.sonicOnExecuted = (output) => {
    const info = output?.sonic_image?.[0];
    if (!info || !Array.isArray(info.size)) return;
    const lines = [faceLine(info.faces, info.face)];
    if (Number(info.batch) > 1) lines.push(`a batch of ${info.batch} images: the first is used`);
    lines.push(`prepared ${info.size[0]}×${info.size[1]}${info.crop ? ", cropped around the face" : ""}`);
    readout.setLines(lines);
  };
}

// ---- Sonic Speakers -------------------------------------------------------------------------------------------

function setupSpeakers(node) {
  const readout = addReadout(node, "sonic_speakers_readout", ["faces: shown after a run"], { dim: true });
  node.sonicOnExecuted = (output) => {
    const info = output?.sonic_speakers?.[0];
    if (!info || !Array.isArray(info.tracks)) return;
    const masks = info.faces === null || info.faces === undefined;
    const found = masks ? "faces given as masks" : `${info.faces} faces found`;
    const drives = info.tracks.map((t) => `track ${t.track} → ${t.face === "mask" ? "its mask" : `face ${t.face}`}`);
    readout.setLines([found, drives.join(", ")]);
  };
}

// ---- wiring -----------------------------------------------------------------------------------------------------

const SETUP = {
  SonicMotionBuckets: setupMotionBuckets,
  SonicSampler: setupSampler,
  SonicAudioEncode: setupAudioEncode,
  SonicReferenceImage: setupReferenceImage,
  SonicSpeakers: setupSpeakers,
};

function classOf(node) {
  return node?.comfyClass ?? node?.type;
}

// "12" in the root graph, "5:12" for node 12 inside the subgraph node 5.
function nodeForExecutionId(executionId) {
  let graph = app.rootGraph ?? app.graph;
  let node = null;
  for (const part of String(executionId).split(":")) {
    if (!graph?.getNodeById) return null;
    node = graph.getNodeById(part) ?? graph.getNodeById(Number(part));
    graph = node?.subgraph;
  }
  return node ?? null;
}

app.registerExtension({
  name: "sonic.portrait",

  setup() {
    api.addEventListener("executed", ({ detail }) => {
      try {
        const node = nodeForExecutionId(detail?.display_node ?? detail?.node);
        if (node && SETUP[classOf(node)]) node.sonicOnExecuted?.(detail.output);
      } catch (error) {
        console.warn("[sonic] could not show a run's results", error);
      }
    });
  },

  nodeCreated(node) {
    const setup = SETUP[classOf(node)];
    if (!setup || node.sonicReady) return;
    node.sonicReady = true;
    try {
      setup(node);
    } catch (error) {
      console.warn(`[sonic] ${classOf(node)}: helpers not added`, error);
      return;
    }
    // Values loaded from a workflow or pasted arrive without widget callbacks: resync after configure.
    const onConfigure = node.onConfigure;
    node.onConfigure = function (...args) {
      const result = typeof onConfigure === "function" ? onConfigure.apply(this, args) : undefined;
      this.sonicSync?.();
      return result;
    };
  },

  loadedGraphNode(node) {
    node.sonicSync?.();
  },
});
