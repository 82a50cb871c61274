"""Sonic Model Check: which model files are found, missing or wrong in ComfyUI's folders, and what to do about it."""
from __future__ import annotations

import sys
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..sonic_model.weights.model_catalog import all_required_found, check_models, format_report
from . import menu
from . import model_files

TOOL = Path(__file__).resolve().parents[1] / "tools" / "models.py"


class SonicModelCheck(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SonicModelCheck", display_name="Sonic Model Check", category=menu.LOADERS,
            is_output_node=True,
            description="Lists every file the Sonic workflows need as found / missing / wrong, recognised by content, "
                        "with the folder each belongs in and where to get it; prints the command that downloads them.",
            inputs=[],
            outputs=[io.String.Output(display_name="report", tooltip="The check as text (also shown on the node): "
                                                                     "one line per file, then what to do."),
                     io.Boolean.Output(display_name="all_found", tooltip="True when every required file is in place.")])

    @classmethod
    def fingerprint_inputs(cls) -> float:
        return float("nan")  # never cached: the folders may have changed since the last run

    @classmethod
    def execute(cls) -> io.NodeOutput:
        """The check over every registered sonic and checkpoints folder, with this ComfyUI's download command."""
        model_files.register_sonic_folder()
        reports = check_models(folder_paths.get_folder_paths(model_files.FOLDER),
                               folder_paths.get_folder_paths("checkpoints"))
        command = " ".join(f'"{p}"' if " " in p else p for p in (sys.executable, str(TOOL), "download",
                                                                 "--models-dir", folder_paths.models_dir))
        report = format_report(reports, base=Path(folder_paths.models_dir), download_command=command)
        return io.NodeOutput(report, all_required_found(reports), ui=ui.PreviewText(report))
