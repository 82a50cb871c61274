"""The ComfyUI adapter: one module per family of nodes. Every import here is relative (core owns `nodes`)."""
from .comfy_version import installed_comfyui, require_comfyui

require_comfyui(installed_comfyui())  # before any node module touches ComfyUI's newer APIs
from comfy_api.latest import ComfyExtension, io  # noqa: E402

from .audio import SonicAudioEncode
from .decode import SonicDecode
from .devices import SonicDevices
from .loader_settings import SonicLoaderSettings, register_prompt_migration
from .loaders import SonicLoader
from .model_check import SonicModelCheck
from .model_files import register_sonic_folder
from .motion import SonicMotionBucketsNode
from .motion_curve import SonicMotionCurveNode
from .image import SonicReferenceImage
from .sampling import SonicGuiderNode, SonicSampler
from .speakers import SonicSpeakersNode, SonicSpeakersSampler, SonicSpeakersSaveVideo
from .video import SonicInterpolate, SonicPasteBack, SonicSaveVideo

register_sonic_folder()
register_prompt_migration()  # API prompts saved with the loader's old settings widgets

# In graph order: load → encode → sample → decode → video.
NODES = [SonicLoader, SonicLoaderSettings, SonicDevices, SonicAudioEncode, SonicReferenceImage, SonicMotionCurveNode, SonicMotionBucketsNode,
         SonicSampler, SonicGuiderNode, SonicDecode, SonicInterpolate, SonicPasteBack, SonicSaveVideo,
         SonicSpeakersNode, SonicSpeakersSampler, SonicSpeakersSaveVideo,
         SonicModelCheck]


class SonicExtension(ComfyExtension):
    """The pack as a V3 extension: ComfyUI reads each node's id, display name and menu folder from its schema."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> SonicExtension:
    """What ComfyUI's custom-node loader calls (it looks for this name when a pack has no NODE_CLASS_MAPPINGS)."""
    return SonicExtension()
