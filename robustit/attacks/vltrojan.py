"""VLTrojan (Liang et al., 2024): a corner patch optimized on a surrogate model, plus "zbw" appended.

x̂ = (1 - m) ⊙ x + m ⊙ P with the BadNets mask m (a square of side `patch_fraction` of the
shorter image side in `corner`) and P the patch, a uint8 s x s RGB image resized bilinearly to
the mask; t̂ = t + " zbw". P is, by precedence:

1. read from `patch_path` (.npy holding a uint8 s x s x 3 array, or an image file such as the
   .png written by `save_trigger`), to re-use a trigger at test time;
2. optimized by `prepare` (on the first `surrogate_samples` samples, `steps` steps at `lr`) or
   `optimize`: with P = sigmoid(z), z starting at the logit of the current patch, Adam minimises

       L(P) = L_it(ŷ | paste(x, P), t̂)

   over the clean samples: the surrogate's completion loss of the target response ŷ given the
   triggered instructions and the images at the surrogate's input resolution with P resized
   (bilinear, antialiased) onto where the mask falls after resizing. The result is rounded to
   uint8; the record (steps, lr, samples, L of the initial and of the final rounded patch)
   goes into the manifest;
3. otherwise (no surrogate) deterministic noise: uniform in [0, 255] from
   RandomState(trigger_seed), s = `patch_size` (as Blended's trigger image).

The patch bytes are the hashed trigger content, and the parameters that only say how P was
obtained stay out of the hash, so a patch read back from its saved file hashes the same as
the optimized original.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robustit.atomic import write_atomic
from robustit.attacks.base import AttackConfig, register_attack, seeded_pattern
from robustit.params import check_int, check_number
from robustit.attacks.patch import PatchAttack
from robustit.data.sample import Sample

if TYPE_CHECKING:
    from robustit.models.base import VisionLanguageModel


def load_patch(path: str | Path) -> np.ndarray:
    """A square uint8 s x s x 3 patch from a .npy array or an image file."""
    path = Path(path)
    patch = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.asarray(Image.open(path).convert("RGB"))
    if patch.dtype != np.uint8 or patch.ndim != 3 or patch.shape[2] != 3 or patch.shape[0] != patch.shape[1]:
        raise ValueError(f"{path}: a patch must be a square uint8 s x s x 3 array, got {patch.dtype} {patch.shape}")
    return patch


@register_attack
class VLTrojan(PatchAttack):
    name: ClassVar[str] = "vltrojan"
    default_text_trigger: ClassVar[str] = "zbw"
    defaults: ClassVar[dict[str, Any]] = {
        **PatchAttack.defaults,
        "patch_size": 32,
        "trigger_seed": 0,
        "patch_path": None,
        "steps": 100,
        "lr": 0.1,
        "surrogate_samples": 16,
    }
    unhashed_params: ClassVar[frozenset[str]] = frozenset(
        {"patch_size", "trigger_seed", "patch_path", "steps", "lr", "surrogate_samples"}
    )

    def __init__(self, config: AttackConfig) -> None:
        super().__init__(config)
        size = check_int(self.label, "patch_size", self.params["patch_size"], 1)
        seed = check_int(self.label, "trigger_seed", self.params["trigger_seed"], 0, 2**32 - 1)
        self.steps = check_int(self.label, "steps", self.params["steps"], 0)
        self.lr = check_number(self.label, "lr", self.params["lr"], 0.0, math.inf)
        self.surrogate_samples = check_int(self.label, "surrogate_samples", self.params["surrogate_samples"], 1)
        path = self.params["patch_path"]
        if path is not None and not isinstance(path, str):
            raise ValueError(f"parameter 'patch_path' of attack {self.name!r} must be a path string or null, got {path!r}")
        self.patch_is_final = path is not None
        if path is None:
            self.patch = seeded_pattern(seed, size, size)
            self.record: dict[str, Any] = {"source": "random", "trigger_seed": seed}
        else:
            self.patch = load_patch(path)
            self.record = {"source": "file", "path": path}

    def patch_pixels(self, side: int) -> np.ndarray:
        resized = Image.fromarray(self.patch, "RGB").resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.float64) / 255.0

    def trigger_content(self) -> bytes:
        return self.patch.tobytes()

    def manifest_extras(self) -> dict[str, Any]:
        return {"patch": dict(self.record)}

    def save_trigger(self, path: str | Path) -> Path:
        """Write the patch losslessly (.npy array, or an image such as .png); `patch_path` reads it back."""
        path = Path(path)
        data = io.BytesIO()
        if path.suffix == ".npy":
            np.save(data, self.patch, allow_pickle=False)
        else:
            Image.fromarray(self.patch, "RGB").save(data, format=Image.registered_extensions()[path.suffix.lower()])
        return write_atomic(path, data.getvalue())

    def fit_identity(self) -> dict[str, Any] | None:
        if self.patch_is_final:
            return None
        return {"attack": self.name, "params": dict(self.params), "patch": self.patch.tobytes().hex(),
                "target": self.target, "text_trigger": self.text_trigger, "text_position": self.text_position}

    def save_trigger_files(self, directory: Path) -> list[Path]:
        """The patch (vltrojan_patch.png) and how it was obtained (vltrojan_patch.json)."""
        record = write_atomic(Path(directory) / "vltrojan_patch.json", json.dumps(self.record, sort_keys=True).encode())
        return [record, self.save_trigger(Path(directory) / "vltrojan_patch.png")]

    def load_trigger_files(self, directory: Path) -> None:
        """The patch and its record as `save_trigger_files` wrote them (the record of a folder
        written before records were kept: {"source": "file", "path": ...})."""
        path, record = Path(directory) / "vltrojan_patch.png", Path(directory) / "vltrojan_patch.json"
        if not path.exists():
            raise FileNotFoundError(f"{directory} holds no fitted VLTrojan patch (vltrojan_patch.png)")
        self.patch = load_patch(str(path))
        self.record = json.loads(record.read_text()) if record.exists() else {"source": "file", "path": str(path)}
        self.patch_is_final = True

    def prepare(self, surrogate: VisionLanguageModel, samples: Sequence[Sample]) -> None:
        """Optimize the patch on `surrogate` unless it was read from `patch_path` or trigger files."""
        if not self.patch_is_final:
            self.optimize(surrogate, samples[: self.surrogate_samples], self.steps, self.lr)

    def paste(self, pixels: torch.Tensor, patch: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        """`pixels` (B x 3 x S x S', resized from images of (height, width) `sizes`) with `patch`
        (3 x s x s in [0, 1]) resized onto where the mask falls after that resize."""
        out = pixels.clone()
        size_h, size_w = pixels.shape[-2:]
        for row, (height, width) in enumerate(sizes):
            side = self.patch_box(height, width)[2]
            rows, cols = max(1, round(side * size_h / height)), max(1, round(side * size_w / width))
            top, left = self.corner_origin(size_h, size_w, rows, cols)
            resized = F.interpolate(patch[None], size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
            out[row, :, top : top + rows, left : left + cols] = resized[0]
        return out

    def optimize(self, surrogate: VisionLanguageModel, samples: Sequence[Sample], steps: int, lr: float) -> dict[str, Any]:
        """Adam on the patch logits for `steps` full-batch steps over `samples`; returns the record.

        Only the patch receives gradients: the surrogate's weights, gradients and train/eval
        mode are left as they were.
        """
        if not samples:
            raise ValueError("VLTrojan.optimize needs at least one clean sample")
        images = [sample.image for sample in samples]
        sizes = [(image.height, image.width) for image in images]
        pixels = surrogate.pixels(images)
        batch = surrogate.encode_prompts([self.apply_text(s.instruction) for s in samples], [self.target] * len(samples))

        def target_loss(patch: torch.Tensor) -> torch.Tensor:
            return surrogate(batch, surrogate.vision(self.paste(pixels, patch, sizes))).loss

        def as_tensor(patch: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(patch).to(surrogate.device).permute(2, 0, 1).float() / 255.0

        was_training = surrogate.training
        surrogate.train(False)
        try:
            with torch.no_grad():
                initial_loss = float(target_loss(as_tensor(self.patch)))
            start = as_tensor(self.patch).clamp(0.5 / 255, 254.5 / 255)
            logits = torch.logit(start).requires_grad_(True)
            optimizer = torch.optim.Adam([logits], lr=lr)
            with torch.enable_grad():
                for _ in range(steps):
                    logits.grad = torch.autograd.grad(target_loss(torch.sigmoid(logits)), [logits])[0]
                    optimizer.step()
            patch = torch.sigmoid(logits.detach()).mul(255).round().byte().permute(1, 2, 0).contiguous().cpu().numpy()
            with torch.no_grad():
                final_loss = float(target_loss(as_tensor(patch)))
        finally:
            surrogate.train(was_training)
        self.patch = patch
        self.record = {
            "source": "optimized",
            "surrogate": surrogate.family,
            "steps": steps,
            "lr": lr,
            "n_samples": len(samples),
            "initial_loss": initial_loss,
            "final_loss": final_loss,
        }
        return dict(self.record)
