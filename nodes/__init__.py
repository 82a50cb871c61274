"""The ComfyUI adapter: one module per family of nodes. Every import here is relative (core owns `nodes`)."""
from .comfy_version import installed_comfyui, require_comfyui

require_comfyui(installed_comfyui())  # before any node module touches ComfyUI's newer APIs
from .audio import SonicAudioEncode
from .decode import SonicDecode
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

# In graph order: load → encode → sample → decode → video.
NODES = [SonicLoader, SonicAudioEncode, SonicReferenceImage, SonicMotionCurveNode, SonicMotionBucketsNode,
         SonicSampler, SonicGuiderNode, SonicDecode, SonicInterpolate, SonicPasteBack, SonicSaveVideo,
         SonicSpeakersNode, SonicSpeakersSampler, SonicSpeakersSaveVideo,
         SonicModelCheck]

NODE_CLASS_MAPPINGS = {node.GET_SCHEMA().node_id: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.GET_SCHEMA().node_id: node.GET_SCHEMA().display_name for node in NODES}
