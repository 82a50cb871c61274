// Workflows saved before the loader's settings moved out keep them as four extra widget values after its seven
// files (dtype, low_vram, compile, weight_dtype); the frontend fills widgets by position and would drop them. This
// moves them where they live now, with LiteGraph's own calls: a Sonic Loader Settings node wired to the loader when
// any setting differs from the default, and core's TorchCompileModel between the loader's MODEL and its users when
// compile was on. API prompts get the same rule on the server (nodes/loader_settings.py).
import { app } from "../../scripts/app.js";

const LOADER_FILES = 7;
const OLD_SETTINGS = ["dtype", "low_vram", "compile", "weight_dtype"];
const DEFAULTS = { dtype: "auto", low_vram: "auto", weight_dtype: "default" };

function linkById(graph, id) {
  return typeof graph.links?.get === "function" ? graph.links.get(id) : graph.links?.[id];
}

function setWidget(node, name, value) {
  const widget = node.widgets?.find((w) => w.name === name);
  if (widget) widget.value = value;
}

function addSettingsNode(loader, old) {
  const slot = loader.findInputSlot("settings");
  if (slot < 0 || loader.inputs[slot].link != null) return;
  const settings = LiteGraph.createNode("SonicLoaderSettings");
  settings.pos = [loader.pos[0], loader.pos[1] - 160];
  loader.graph.add(settings);
  for (const name of Object.keys(DEFAULTS)) setWidget(settings, name, old[name]);
  settings.connect(0, loader, slot);
}

function addCompileNode(loader) {
  const graph = loader.graph;
  const modelSlot = loader.findOutputSlot("model");
  if (modelSlot < 0) return;
  const users = (loader.outputs[modelSlot].links ?? []).map((id) => linkById(graph, id)).filter(Boolean)
    .map((link) => [link.target_id, link.target_slot]);
  const compiler = LiteGraph.createNode("TorchCompileModel");
  compiler.pos = [loader.pos[0] + loader.size[0] + 40, loader.pos[1]];
  graph.add(compiler);
  setWidget(compiler, "backend", "inductor");
  loader.connect(modelSlot, compiler, 0);
  for (const [id, slot] of users) compiler.connect(0, graph.getNodeById(id), slot);
}

function migrate(loader) {
  const saved = loader.sonicOldSettings;
  delete loader.sonicOldSettings;
  const old = Object.fromEntries(OLD_SETTINGS.map((name, i) => [name, saved[i]]));
  if (Object.keys(DEFAULTS).some((name) => old[name] !== DEFAULTS[name])) addSettingsNode(loader, old);
  if (old.compile === true) addCompileNode(loader);
}

app.registerExtension({
  name: "sonic.portrait.loader-migration",

  nodeCreated(node) {
    if ((node.comfyClass ?? node.type) !== "SonicLoader") return;
    const onConfigure = node.onConfigure;
    node.onConfigure = function (info, ...rest) {
      const values = info?.widgets_values;
      if (Array.isArray(values) && values.length === LOADER_FILES + OLD_SETTINGS.length) {
        this.sonicOldSettings = values.slice(LOADER_FILES);
      }
      return typeof onConfigure === "function" ? onConfigure.call(this, info, ...rest) : undefined;
    };
  },

  loadedGraphNode(node) {
    if (node.sonicOldSettings) migrate(node);
  },
});
