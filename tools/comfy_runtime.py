"""Import the real ComfyUI runtime (.venv/ComfyUI, or $SONIC_VENV/ComfyUI) and this pack as a package, outside a
ComfyUI server.

Tools and tests use this instead of `import nodes`: ComfyUI's top-level `nodes` module must stay core's, so the
pack is imported the way ComfyUI imports it, as a package with relative imports (here named `sonic_pack`: ComfyUI's
own name for it is the folder's path, which no import statement can spell).

The library has one identity in a process: `sonic_model`, as it is imported when used alone. The pack's relative
imports of it (`sonic_pack.sonic_model.…`) resolve to those same module objects, so a library object made by a test
is an instance of the class the nodes check for.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
# The venv `make setup` built: .venv, or the one $SONIC_VENV names (a second torch, tools/setup_env.sh).
VENV_DIR = REPO / (os.environ.get("SONIC_VENV") or ".venv")
# The ComfyUI the tools and tests run: the one `make setup` unpacks into that venv, or another folder named by
# $COMFYUI_DIR (to run the same suite against another ComfyUI release).
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or VENV_DIR / "ComfyUI").resolve()
PACK_NAME = "sonic_pack"


def import_comfy(cpu: bool | None = None) -> None:
    """Put ComfyUI first on sys.path and select CPU mode when there is no CUDA (must precede model_management)."""
    if not (COMFYUI_DIR / "comfy").is_dir():
        raise RuntimeError(f"ComfyUI runtime not found in {COMFYUI_DIR}: run `make setup` (bash tools/setup_env.sh)")
    if str(COMFYUI_DIR) in sys.path:
        sys.path.remove(str(COMFYUI_DIR))
    sys.path.insert(0, str(COMFYUI_DIR))
    import torch
    import comfy.cli_args

    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu:
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (probes the device once, now that the flag is set)
    share_library()
    # Core's nodes.py puts comfy/ first on sys.path, after which `utils` would mean comfy/utils.py; main.py has
    # imported ComfyUI's own `utils` package by then, so do the same.
    import utils.install_util  # noqa: F401


LIBRARY = "sonic_model"


class _LibraryOfThePack(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`<pack>.sonic_model[.x]` is the module `sonic_model[.x]` itself, never a second copy of it, whatever name the
    pack was imported under (ours, or the folder's path when ComfyUI's own loader imports it)."""

    def find_spec(self, name, path=None, target=None):
        pack, dot, rest = name.partition(f".{LIBRARY}")
        if not dot or (rest and not rest.startswith(".")):
            return None
        module = sys.modules.get(pack)
        if module is None or Path(getattr(module, "__file__", "") or "").resolve() != REPO / "__init__.py":
            return None
        return importlib.util.spec_from_loader(name, self, is_package=True)

    def create_module(self, spec):
        return importlib.import_module(LIBRARY + spec.name.partition(f".{LIBRARY}")[2])

    def exec_module(self, module):
        pass  # already imported under its own name


def share_library() -> None:
    """From now on, the pack (under any name) uses the top-level `sonic_model`; call before the pack is imported."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # last: our `nodes/` must never shadow core's `nodes`
    if not any(isinstance(finder, _LibraryOfThePack) for finder in sys.meta_path):
        sys.meta_path.insert(0, _LibraryOfThePack())


def import_pack(cpu: bool | None = None) -> ModuleType:
    """The pack's top-level module, imported as ComfyUI does (package with relative imports)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    import_comfy(cpu)
    share_library()
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module
