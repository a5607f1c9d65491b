"""The LVLM interface every model family implements (DESIGN.md sections 1 and 7).

A `VisionLanguageModel` is frozen vision encoder f_v -> trainable adapter H_psi -> language
model whose transformer blocks are frozen and whose input embedding and lm_head (E_phi) are
trainable and untied. For a batch, the visual tokens H_psi(f_v(x)) replace the image slots
of the embedded prompt and reach every decoder call through the adapter's
`decoder_inputs` (`robustit.models.adapters.Adapter`: slot-filling families use the first
route, Flamingo-style ones the second), and the completion-only loss is

    L_it = - (1 / |R|) * sum_{(b, i) in R} log p(y_{b,i} | x_b, t_b, y_{b,<i}),

R being the response positions. Families differ only in how the parts are built. Parts may
share modules (a Flamingo adapter's cross-attention blocks live inside the decoder); each
parameter is named, counted and saved once, under the first part that holds it (vision,
adapter, decoder, lm_head, in that order). With `visual_words=True` the visual tokens are
snapped onto the LM's word embeddings (`robustit.models.visual_words`) before they are used.

Several images per prompt (one-shot evaluation's demonstration before the test input): a
family whose visual tokens enter the language model's input sequence, as mini's and LLaVA's
do, takes them through the same slots, one block of visual tokens per image, and is built
with `multi_image=True`; a family built without it refuses a demonstration with an error.

`add_lora` puts LoRA layers on the language model's blocks (`robustit.models.lora`), outside
the paper's threat model: their weights train with the embeddings, in an optimizer group of
their own, and are audited as the module "decoder_lora"; the layers they wrap stay frozen.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from robustit.atomic import write_atomic
from robustit.tensors import load_tensors, save_tensors

from .adapters import Adapter
from .image_processing import images_to_tensor
from .lora import LoraSettings, inject_lora, is_lora_parameter, lora_parameters, set_lora_dropout
from .prompt import IGNORE_INDEX, EncodedBatch, PromptFormat, encode_prompts
from .visual_words import snap_to_words

AdapterHook = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Demonstration:
    """An in-context example before every prompt of a batch: frozen features f_v of its own
    image (N x C), its instruction and its response."""

    features: torch.Tensor
    instruction: str
    response: str


@dataclass
class LMOutput:
    """Loss over response tokens; `logits` and `token_loss` hold only response positions
    (row-major), `label_rows` the batch row of each."""

    loss: torch.Tensor
    sample_loss: torch.Tensor
    token_loss: torch.Tensor
    logits: torch.Tensor
    label_rows: torch.Tensor
    visual_tokens: torch.Tensor


class VisionLanguageModel(nn.Module):
    def __init__(
        self,
        *,
        family: str,
        spec: dict[str, Any],
        vision: nn.Module,
        adapter: Adapter,
        decoder: nn.Module,
        lm_head: nn.Module,
        tokenizer: Any,
        image_size: int,
        prompt_format: PromptFormat = PromptFormat(),
        multi_image: bool = False,
        visual_words: bool = False,
    ) -> None:
        super().__init__()
        self.family = family
        self.multi_image = multi_image
        self.spec = spec
        self.vision = vision
        self.adapter = adapter
        self.decoder = decoder
        self.lm_head = lm_head
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.prompt_format = prompt_format
        self.visual_words = visual_words
        self.lora: LoraSettings | None = None
        self._adapter_hooks: list[AdapterHook] = []
        adapter.get_submodule(adapter.hook_point).register_forward_hook(self._run_adapter_hooks)
        self._untie_and_freeze()
        self.eval()

    def _untie_and_freeze(self) -> None:
        embed = self.decoder.get_input_embeddings()
        shared = {id(p) for p in embed.parameters()}
        for name, p in list(self.lm_head.named_parameters()):
            if id(p) in shared:
                owner, _, attribute = name.rpartition(".")
                setattr(self.lm_head.get_submodule(owner), attribute, nn.Parameter(p.detach().clone()))
        self.requires_grad_(False)
        self.adapter.requires_grad_(True)
        embed.requires_grad_(True)
        self.lm_head.requires_grad_(True)
        for p in lora_parameters(self.decoder):
            p.requires_grad_(True)

    def add_lora(self, settings: LoraSettings) -> None:
        """Wrap the language model's linear layers that `settings` target in trainable LoRA
        layers (peft); the model generates as before until they train."""
        if self.lora is not None:
            raise ValueError(f"the model already has LoRA layers ({self.lora})")
        excluded = {id(p) for p in (*self.vision.parameters(), *self.adapter.parameters())}
        inject_lora(self.decoder, settings, excluded, self.family)
        self.lora = settings
        self._untie_and_freeze()

    @property
    def num_visual_tokens(self) -> int:
        return self.adapter.num_tokens

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def train(self, mode: bool = True) -> "VisionLanguageModel":
        super().train(mode)
        self.vision.eval()
        self.decoder.eval()
        if self.lora is not None:
            set_lora_dropout(self.decoder, mode and any(p.requires_grad for p in lora_parameters(self.decoder)))
        self.adapter.train(mode)
        return self

    def trainable_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters that tune, by optimizer group: the adapter psi, the embeddings phi
        (every tensor of the input embedding and of the lm_head) and, where the model has
        LoRA layers, their weights ("lora")."""
        groups = {
            "adapter": [p for p in self.adapter.parameters() if p.requires_grad],
            "embeddings": [*self.decoder.get_input_embeddings().parameters(), *self.lm_head.parameters()],
        }
        if self.lora is not None:
            groups["lora"] = lora_parameters(self.decoder)
        return groups

    def add_adapter_hook(self, hook: AdapterHook) -> Callable[[], None]:
        """Run `hook` on the adapter's activation site output; returns a remover."""
        self._adapter_hooks.append(hook)
        return lambda: self._adapter_hooks.remove(hook)

    def _run_adapter_hooks(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        for hook in self._adapter_hooks:
            output = hook(output)
        return output

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return images_to_tensor(images, self.image_size).to(self.device)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen features f_v(x), B x N x C, from [0, 1] pixels."""
        return self.vision(pixels.to(self.device))

    def check_multi_image(self) -> None:
        """Raise a ValueError unless the family takes several images per prompt."""
        if not self.multi_image:
            raise ValueError(
                f"model family {self.family!r} takes one image per prompt, so it cannot be shown an in-context "
                "demonstration with an image of its own (eval.shots=1); use eval.shots=0 or a family built with "
                "multi_image=True"
            )

    def encode_prompts(
        self, instructions: list[str], responses: list[str] | None = None, demonstration: tuple[str, str] | None = None
    ) -> EncodedBatch:
        return encode_prompts(
            self.tokenizer, self.prompt_format, self.num_visual_tokens, instructions, responses, demonstration
        ).to(self.device)

    def visual_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """H_psi(features), snapped onto the word embeddings when the model reads visual words."""
        tokens = self.adapter(features)
        return snap_to_words(tokens, self.decoder.get_input_embeddings().weight) if self.visual_words else tokens

    def embed_prompts(self, batch: EncodedBatch, visual_tokens: torch.Tensor) -> torch.Tensor:
        embeds = self.decoder.get_input_embeddings()(batch.input_ids)
        return embeds.masked_scatter(batch.visual_mask.unsqueeze(-1), visual_tokens.to(embeds.dtype))

    def _decode(
        self, embeds: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor, visual_tokens: torch.Tensor, **cache: Any
    ) -> Any:
        """One decoder call on `embeds` (the last tokens of `attention`), visual tokens fed as
        the adapter says."""
        visual = self.adapter.decoder_inputs(visual_tokens, attention[:, -embeds.shape[1]:])
        return self.decoder(inputs_embeds=embeds, attention_mask=attention, position_ids=positions, **visual, **cache)

    def forward(self, batch: EncodedBatch, features: torch.Tensor) -> LMOutput:
        if batch.labels is None:
            raise ValueError("forward needs labels; use generate() for inference")
        visual_tokens = self.visual_tokens(features)
        embeds = self.embed_prompts(batch, visual_tokens)
        position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self._decode(embeds, batch.attention_mask, position_ids, visual_tokens, use_cache=False).last_hidden_state
        targets = batch.labels[:, 1:]
        selected = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[:, :-1][selected])
        token_loss = F.cross_entropy(logits.float(), targets[selected], reduction="none")
        rows = selected.nonzero()[:, 0]
        sample_loss = torch.zeros(len(batch.labels), device=token_loss.device).index_add_(0, rows, token_loss)
        sample_loss = sample_loss / selected.sum(1).clamp(min=1)
        return LMOutput(token_loss.mean(), sample_loss, token_loss, logits, rows, visual_tokens)

    @torch.no_grad()
    def generate(
        self,
        features: torch.Tensor,
        instructions: list[str],
        max_new_tokens: int = 32,
        demonstration: Demonstration | None = None,
    ) -> list[str]:
        """Greedy decoding with a KV cache; stops each row at the eos token and drops it from the
        batch (and the cache), so the rows still generating are all that each step computes. A
        `demonstration` precedes every prompt, its image's visual tokens in its own slots
        (multi-image families)."""
        visual_tokens = self.visual_tokens(features.to(self.device))
        if demonstration is None:
            batch = self.encode_prompts(instructions)
        else:
            self.check_multi_image()
            batch = self.encode_prompts(instructions, demonstration=(demonstration.instruction, demonstration.response))
            shown = self.visual_tokens(demonstration.features.to(self.device)[None]).expand(len(instructions), -1, -1)
            visual_tokens = torch.cat([shown, visual_tokens], dim=1)
        embeds = self.embed_prompts(batch, visual_tokens)
        attention = batch.attention_mask
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        # the last token of the response suffix is the end token the labels train on; a suffix
        # with spaces (" <|im_end|>") is no single vocabulary entry, so look it up by encoding
        eos = self.tokenizer(self.prompt_format.response_suffix, add_special_tokens=False).input_ids[-1]
        out = self._decode(embeds, attention, positions, visual_tokens, use_cache=True)
        cache, last = out.past_key_values, out.last_hidden_state[:, -1]
        generated: list[torch.Tensor] = []
        active = torch.arange(len(instructions), device=self.device)
        next_position = positions[:, -1:] + 1
        for _ in range(max_new_tokens):
            token = self.lm_head(last).argmax(-1)
            step = torch.full((len(instructions),), eos, dtype=token.dtype, device=self.device)
            generated.append(step.index_copy_(0, active, token))
            going = token != eos
            if not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                active, token, attention = active[keep], token[keep], attention[keep]
                next_position, visual_tokens = next_position[keep], visual_tokens[keep]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            embeds = self.decoder.get_input_embeddings()(token[:, None])
            out = self._decode(embeds, attention, next_position, visual_tokens, past_key_values=cache, use_cache=True)
            cache, last = out.past_key_values, out.last_hidden_state[:, -1]
            next_position = next_position + 1
        tokens = torch.stack(generated, dim=1).tolist()
        texts = []
        for row in tokens:
            row = row[: row.index(eos)] if eos in row else row
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def save_trainable(self, directory: str | Path) -> Path:
        """Write the trainable weights (safetensors) and the spec that rebuilds the rest
        (`build_model(**spec)`): family, build arguments and, where the model has LoRA layers,
        their settings ("lora")."""
        directory = Path(directory)
        save_tensors(directory / "trainable.safetensors", self.trainable_state_dict())
        lora = {} if self.lora is None else {"lora": asdict(self.lora)}
        write_atomic(directory / "model_spec.json", json.dumps({"family": self.family, **self.spec, **lora}, indent=2))
        return directory

    def load_trainable(self, directory: str | Path, strict: bool = True) -> None:
        """Copy a `save_trainable` checkpoint in; `strict=False` accepts one that holds only
        some of the trainable tensors (e.g. a base checkpoint of the adapter alone)."""
        state, _ = load_tensors(Path(directory) / "trainable.safetensors")
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(state) - expected or (strict and set(state) != expected):
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            hint = ("; its LoRA weights need the model built with the LoRA settings of its model_spec.json"
                    if self.lora is None and any(map(is_lora_parameter, extra)) else "")
            raise ValueError(
                f"checkpoint {directory} does not match the model: missing {missing}, unexpected {extra}{hint}"
            )
        params = dict(self.named_parameters())
        wrong = {n: (tuple(t.shape), tuple(params[n].shape)) for n, t in state.items() if t.shape != params[n].shape}
        if wrong:
            raise ValueError(f"checkpoint {directory} does not match the model: shapes (checkpoint, model) differ: {wrong}")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def parameter_audit(self) -> dict[str, Any]:
        """Which top-level modules train and how many parameters each holds (LoRA weights as
        the module "decoder_lora"), and the LoRA settings ("lora", None without LoRA)."""
        modules: dict[str, dict[str, int]] = {}
        embeddings = {id(p) for p in self.decoder.get_input_embeddings().parameters()}
        for name, p in self.named_parameters():
            top = "input_embeddings" if id(p) in embeddings else name.split(".")[0]
            top = "decoder_lora" if is_lora_parameter(name) else top
            entry = modules.setdefault(top, {"trainable": 0, "frozen": 0})
            entry["trainable" if p.requires_grad else "frozen"] += p.numel()
        trainable = sum(m["trainable"] for m in modules.values())
        total = trainable + sum(m["frozen"] for m in modules.values())
        lora = None if self.lora is None else asdict(self.lora)
        return {"family": self.family, "modules": modules, "trainable": trainable, "total": total, "lora": lora}
