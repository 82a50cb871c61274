"""The ComfyUI adapter: one module per family of nodes. Every import here is relative (core owns `nodes`)."""
from .audio import SonicAudioEncode
from .loaders import SonicLoader
from .model_files import register_sonic_folder
from .motion import SonicMotionBucketsNode
from .sampling import SonicSampler

register_sonic_folder()

NODES = [SonicLoader, SonicAudioEncode, SonicMotionBucketsNode, SonicSampler]

NODE_CLASS_MAPPINGS = {node.GET_SCHEMA().node_id: node for node in NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.GET_SCHEMA().node_id: node.GET_SCHEMA().display_name for node in NODES}
