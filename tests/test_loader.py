"""Loading checkpoints by name: layouts, and errors that name the tensor."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

from vlmctl.daemon.models.loader import WeightsError, build_model, resolve_model_path
from vlmctl.daemon.models.registry import UnsupportedModel, model_class


def copy_with_tensors(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file(edit(tensors), dst / "model.safetensors")
    return dst


def load(path: Path):
    return build_model(AutoConfig.from_pretrained(path), path, torch.float32, torch.device("cpu"), 512)


def test_missing_tensor_is_named(tiny_llama_llava, tmp_path):
    def drop(tensors):
        del tensors["language_model.model.layers.1.self_attn.k_proj.weight"]
        return tensors

    path = copy_with_tensors(tiny_llama_llava, tmp_path / "m", drop)
    with pytest.raises(WeightsError, match=r"missing tensor 'model\.language_model\.layers\.1\.self_attn\.k_proj\.weight'"):
        load(path)


def test_mis_shaped_tensor_is_named_with_both_shapes(tiny_llama_llava, tmp_path):
    def shrink(tensors):
        key = "multi_modal_projector.linear_1.weight"
        tensors[key] = tensors[key][:, :-1].contiguous()
        return tensors

    path = copy_with_tensors(tiny_llama_llava, tmp_path / "m", shrink)
    with pytest.raises(WeightsError, match=r"multi_modal_projector\.linear_1\.weight.*\(64, 31\).*\(64, 32\)"):
        load(path)


def test_unexpected_tensor_is_named(tiny_llama_llava, tmp_path):
    def add(tensors):
        tensors["language_model.model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
        return tensors

    path = copy_with_tensors(tiny_llama_llava, tmp_path / "m", add)
    with pytest.raises(WeightsError, match=r"layers\.9\.mlp\.up_proj\.weight.*has no place"):
        load(path)


@pytest.mark.parametrize(
    "rename",
    [
        # llava-hf/* on the hub (saved before transformers 4.52)
        lambda k: re.sub(r"^vision_tower\.", "vision_tower.vision_model.", k),
        # transformers 4.52+ in-memory layout
        lambda k: re.sub(r"^language_model\.lm_head", "lm_head",
                         re.sub(r"^language_model\.model\.", "model.language_model.",
                                re.sub(r"^(vision_tower|multi_modal_projector)\.", r"model.\1.", k))),
    ],
    ids=["hub-legacy", "model-prefixed"],
)
def test_every_checkpoint_layout_loads_the_same_weights(tiny_llama_llava, tmp_path, rename):
    path = copy_with_tensors(tiny_llama_llava, tmp_path / "m", lambda t: {rename(k): v for k, v in t.items()})
    expected = load(tiny_llama_llava).state_dict()
    got = load(path).state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_unsupported_architecture_lists_supported_ones():
    config = AutoConfig.for_model("llama")
    config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(UnsupportedModel, match="GPT2LMHeadModel.*LlavaForConditionalGeneration"):
        model_class(config)


def test_unknown_model_id_offline_says_so():
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id"):
        resolve_model_path("nobody/no-such-model-here")


def test_hub_id_resolves_from_the_offline_cache(tiny_llama_llava, tmp_path):
    snapshot = tmp_path / "hub" / "models--tiny--llava" / "snapshots" / "abc123"
    shutil.copytree(tiny_llama_llava, snapshot)
    (tmp_path / "hub" / "models--tiny--llava" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny--llava" / "refs" / "main").write_text("abc123")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    code = "from vlmctl.daemon.models.loader import resolve_model_path; print(resolve_model_path('tiny/llava'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == snapshot
