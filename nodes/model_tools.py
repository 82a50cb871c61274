"""What core's MODEL→MODEL nodes left on a Sonic MODEL, read from the patcher before sampling starts.

Core nodes record their work on the patcher they return: `model_options` (CFG functions, transformer patches, the
UNet function wrapper, torch.compile's settings), `object_patches` (e.g. a new model_sampling) and weight patches
(LoRA, merges). Weight patches and apply_model wrappers core applies itself, so they work on the Sonic UNet as on
any model; torch.compile (core's TorchCompileModel) compiles its diffusion model and is honoured. The rest either
rewrites core's two-way CFG, hooks into core's own UNet blocks (which Sonic's diffusers UNet never calls, so they
would be ignored without a word) or changes what the UNet's output means: those are refused here, at the start of
the run, with the node that added them named.
"""
from __future__ import annotations

import comfy.model_sampling

# Where core's TorchCompileModel keeps its settings (comfy_api.torch_helpers); the same key in every release.
try:
    from comfy_api.torch_helpers.torch_compile import TORCH_COMPILE_KWARGS
except ImportError:  # a core without the helper has no TorchCompileModel either
    TORCH_COMPILE_KWARGS = "torch_compile_kwargs"

_TWO_WAY_CFG = ("sampler_cfg_function", "sampler_pre_cfg_function")
# Object patches whose value is plain data (no function to name its node by): the core node that sets each.
_DATA_PATCHES = {"manual_cast_dtype": "ModelComputeDtype", "latent_format": "ModelSamplingStableCascade"}


def origin_of(patch) -> str:
    """The node that made `patch`: core's nodes build their patch functions (and model-sampling classes) inside the
    node's method, so the qualified name starts with the node's class. Else the function's own name."""
    qualname = getattr(patch, "__qualname__", None) or type(patch).__qualname__
    if "<locals>" in qualname:
        return qualname.split(".")[0]
    return getattr(patch, "__name__", None) or qualname


def _origins(patches) -> str:
    names = []
    for patch in patches if isinstance(patches, (list, tuple)) else [patches]:
        name = origin_of(patch)
        if name not in names:
            names.append(name)
    return ", ".join(names)


def _block_patches(transformer_options: dict) -> list[tuple[str, object]]:
    """(kind, patch) for every patch or replacement of core's UNet blocks (FreeU's output-block patch, attention
    patches and replacements such as SelfAttentionGuidance's)."""
    found = []
    for kind, patches in transformer_options.get("patches", {}).items():
        found += [(kind, patch) for patch in patches]
    for kind, replacements in transformer_options.get("patches_replace", {}).items():
        found += [(kind, patch) for patch in replacements.values()]
    return found


def _sonic_sampling(model_sampling) -> bool:
    """A model sampling the Sonic UNet can run under: EDM σ with v-prediction (ModelSamplingContinuousEDM's
    v_prediction), whatever its σ range."""
    return (isinstance(model_sampling, comfy.model_sampling.ModelSamplingContinuousEDM)
            and isinstance(model_sampling, comfy.model_sampling.V_PREDICTION))


def refuse_unsupported_tools(patcher) -> None:
    """Raise ValueError naming the first node whose change to this MODEL Sonic cannot honour."""
    options = patcher.model_options
    for key in _TWO_WAY_CFG:
        if options.get(key):
            raise ValueError(f"{origin_of(options[key])} rewrites core's two-way CFG ({key}), which Sonic's "
                             "three-way guidance does not use: remove it from the MODEL chain.")
    if options.get("model_function_wrapper"):
        raise ValueError(f"{origin_of(options['model_function_wrapper'])} wraps core's UNet call per cond batch "
                         "(model_function_wrapper), which the Sonic guider does not make: remove it from the "
                         "MODEL chain.")
    for kind, patch in _block_patches(options.get("transformer_options", {})):
        raise ValueError(f"{origin_of(patch)} patches core's UNet blocks ({kind}), which Sonic's UNet does not "
                         "have, so it would change nothing: remove it from the MODEL chain.")
    for name, patch in getattr(patcher, "object_patches", {}).items():
        if name == "model_sampling" and _sonic_sampling(patch):
            continue
        if name == "model_sampling":
            raise ValueError(f"{origin_of(patch)} gives the MODEL a model sampling the Sonic UNet was not trained "
                             "for (it predicts v over EDM σ): remove it, or use ModelSamplingContinuousEDM with "
                             "sampling v_prediction.")
        maker = _DATA_PATCHES.get(name) or origin_of(patch)
        hint = " (Sonic's precision is the loader settings' dtype)" if name == "manual_cast_dtype" else ""
        raise ValueError(f"{maker} replaces the MODEL's {name}, which Sonic cannot take{hint}: remove it from "
                         "the MODEL chain.")


def compile_backend(patcher) -> str | None:
    """The torch.compile backend core's TorchCompileModel set on this MODEL, or None."""
    settings = patcher.model_options.get(TORCH_COMPILE_KWARGS)
    if not settings:
        return None
    backend = settings.get("backend")
    return getattr(backend, "__name__", None) or str(backend)
