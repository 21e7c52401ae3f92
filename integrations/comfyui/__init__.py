"""renegx's ComfyUI nodes: learned negative embeddings (renegx files, official ReNeg tensors) and per-prompt
banks as the KSampler's negative CONDITIONING.

Install: link this folder into `ComfyUI/custom_nodes/` and put the files in `ComfyUI/models/reneg/`
(docs/comfyui.md). ComfyUI's modules are imported only when a node needs them.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_models_folder

register_models_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
