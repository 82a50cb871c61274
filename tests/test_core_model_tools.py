"""Core's MODEL→MODEL nodes on a Sonic MODEL: TorchCompileModel compiles it (one graph, no breaks), LoRA, merges,
CFGZeroStar/CFGNorm and an EDM v-prediction ModelSampling work, and what Sonic cannot honour is refused before the
first UNet call with the node named."""
import asyncio
from types import SimpleNamespace

import pytest
import torch

from sonic_fakes import RecordingUNet, load_tiny_sonic, make_conditioning, node_inputs
from tools.comfy_runtime import import_pack
from tools.tiny_models import AUDIO_TOKENS, TINY_UNET_CONFIG

import_pack()
import comfy.sd  # noqa: E402
import nodes  # noqa: E402  (core's)
from sonic_pack.nodes.native_model import sonic_model_patcher  # noqa: E402
from sonic_pack.nodes.sampling import run_sonic_sampler  # noqa: E402

asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))


def core_node(name: str, model, **inputs):
    """One of core's MODEL nodes run as the executor runs it (V3 execute or V1 FUNCTION)."""
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    out = cls.execute(model, **inputs) if hasattr(cls, "define_schema") else getattr(cls(), cls.FUNCTION)(model,
                                                                                                          **inputs)
    return (out.result if hasattr(out, "result") else out)[0]


def _recording_model():
    unet = RecordingUNet()
    unet.config = SimpleNamespace(block_out_channels=[32])  # FreeU reads the first level's width
    return sonic_model_patcher(unet, low_vram=False), unet


def _sample(model, n=4, report=None, cond=None):
    audio, image, motion = node_inputs(cond or make_conditioning(n))
    return run_sonic_sampler(model, audio, image, motion, 0, 2, 2.0, 7.5, 1, 4, "euler", "karras", 1.0,
                             report=report)


@pytest.fixture(scope="module")
def tiny(tiny_models_dir):
    models, model = load_tiny_sonic(tiny_models_dir)
    cond = make_conditioning(4, h=8, w=8, d=TINY_UNET_CONFIG["cross_attention_dim"], t=AUDIO_TOKENS)
    return model, cond


REFUSED = [
    ("RescaleCFG", dict(multiplier=0.7), "RescaleCFG rewrites core's two-way CFG"),
    ("FreeU", dict(b1=1.1, b2=1.2, s1=0.9, s2=0.2), "FreeU patches core's UNet blocks (output_block_patch)"),
    ("FreeU_V2", dict(b1=1.1, b2=1.2, s1=0.9, s2=0.2), "FreeU_V2 patches core's UNet blocks"),
    ("SelfAttentionGuidance", dict(scale=0.5, blur_sigma=2.0), "SelfAttentionGuidance patches core's UNet blocks"),
    ("PerturbedAttentionGuidance", dict(scale=3.0), "PerturbedAttentionGuidance reruns the UNet on core's cond"),
    ("ModelSamplingDiscrete", dict(sampling="eps", zsnr=False), "ModelSamplingDiscrete gives the MODEL a model "
                                                                 "sampling the Sonic UNet was not trained for"),
    ("ModelComputeDtype", dict(dtype="fp16"), "ModelComputeDtype replaces the MODEL's manual_cast_dtype"),
]


@pytest.mark.parametrize("name,inputs,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_node_sonic_cannot_honour_is_refused_by_name_before_the_first_unet_call(name, inputs, message):
    model, unet = _recording_model()
    with pytest.raises(ValueError, match="remove it") as refused:
        _sample(core_node(name, model, **inputs))
    assert str(refused.value).startswith(message), refused.value
    assert unet.calls == []  # refused at the start, not part-way through sampling


def test_working_nodes_change_the_result_as_they_should():
    model, _ = _recording_model()
    plain = _sample(model)
    same_sampling = core_node("ModelSamplingContinuousEDM", model, sampling="v_prediction", sigma_max=700.0,
                              sigma_min=0.002)
    # EDM v-prediction over the same σ range: only the first-σ noise scaling differs from Sonic's own
    assert torch.isfinite(_sample(same_sampling)).all()
    for name, inputs in (("CFGZeroStar", {}), ("CFGNorm", dict(strength=1.0))):
        patched = _sample(core_node(name, model, **inputs))
        assert torch.isfinite(patched).all() and not torch.allclose(patched, plain), name


def test_lora_and_merge_patch_the_sonic_unets_weights_through_core(tiny):
    model, cond = tiny
    plain = _sample(model, cond=cond)
    key = "diffusion_model.unet.conv_in.weight"
    weight = model.model.state_dict()[key]
    rank = 2
    lora = {"lora_unet_unet_conv_in.lora_up.weight": torch.randn(weight.shape[0], rank),
            "lora_unet_unet_conv_in.lora_down.weight": torch.randn(rank, *weight.shape[1:]) * 0.1}
    loaded, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
    assert key in loaded.patches  # core's key map found the Sonic layer
    assert not torch.allclose(_sample(loaded, cond=cond), plain)
    merged = core_node("ModelMergeSimple", model, model2=loaded, ratio=0.5)
    assert key in merged.patches
    assert not torch.allclose(_sample(merged, cond=cond), plain)
    assert torch.equal(_sample(model, cond=cond), plain)  # the loader's MODEL itself is untouched


def test_cores_torch_compile_node_compiles_the_sonic_unet_in_one_graph(tiny):
    """TorchCompileModel (core's node, backend as its combo offers it) on the Sonic MODEL: the whole diffusion model
    traced as one graph with no breaks, the same video as eager, the compile reported."""
    import torch._dynamo.utils as dynamo_utils

    model, cond = tiny
    eager = _sample(model, cond=cond)
    compiled = core_node("TorchCompileModel", model, backend="cudagraphs")  # on a CPU: dynamo's graph, no cudagraph
    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    report = {}
    out = _sample(compiled, cond=cond, report=report)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1, dict(dynamo_utils.counters["stats"])
    assert sum(dynamo_utils.counters["graph_break"].values()) == 0, dict(dynamo_utils.counters["graph_break"])
    torch.testing.assert_close(out, eager, atol=1e-4, rtol=1e-4)
    assert report["compiled"] == "cudagraphs" and report["first_window_seconds"] > 0
