"""The library has one identity in the test process: the pack's relative imports of `sonic_model` (under our name for
the pack, or the folder-path name ComfyUI's own loader gives it) are the top-level `sonic_model` modules themselves."""
import importlib.util
import sys

import numpy as np

from conftest import REPO
from tools.comfy_runtime import import_pack


def _library_files() -> dict[str, set[int]]:
    """Each library file → the ids of the module objects loaded from it."""
    files: dict[str, set[int]] = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(str(REPO / "sonic_model")):
            files.setdefault(path, set()).add(id(module))
    return files


def test_the_pack_and_the_tests_share_every_library_module():
    pack = import_pack()
    from sonic_model.image.face_detect import FaceBox

    speakers = importlib.import_module(f"{pack.__name__}.nodes.speakers")
    box = FaceBox(0, 0, 4, 4, 0.9, np.zeros((5, 2)))
    boxes, _, _ = speakers.pair_tracks_with_faces([None], lambda: [box], "left to right", "", "no detector")
    assert boxes == [box] and isinstance(boxes[0], sys.modules[f"{pack.__name__}.sonic_model.image.face_detect"].FaceBox)
    copies = {path: ids for path, ids in _library_files().items() if len(ids) > 1}
    assert not copies, f"library files loaded as two modules: {sorted(copies)}"


def test_a_pack_imported_under_comfyuis_folder_name_shares_it_too():
    name = str(REPO).replace(".", "_x_")  # how ComfyUI names a custom node folder in sys.modules
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    guider = importlib.import_module(f"{name}.nodes.guider")
    import sonic_model.sampling.shift_fusion as shift_fusion

    assert guider.ShiftFusion is shift_fusion.ShiftFusion
    assert not {path for path, ids in _library_files().items() if len(ids) > 1}
