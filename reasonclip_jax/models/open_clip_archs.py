"""open_clip's ViT CLIP architectures: what their weights do not show (attention heads, the
activation) and what they do (widths, depths, MLP widths, patch and image size, embedding),
transcribed from open_clip's model configs (github.com/mlfoundations/open_clip @ 89fb801,
src/open_clip/model_configs/NAME.json).

open_clip's defaults fill what a config leaves out: vision `head_width` 64 (heads = width /
head_width), text `heads` 8, `mlp_ratio` 4 (MLP width = int(width * mlp_ratio)), and
`nn.GELU` (exact) unless `"quick_gelu": true`. OpenAI's own weights are the `-quickgelu`
names (open_clip loads `pretrained="openai"` with QuickGELU); LAION's ViT-H/g/bigG use GELU.

    python -m reasonclip_jax.convert import --format openai --arch ViT-H-14 \\
        --input open_clip_pytorch_model.bin --output CKPT_DIR
"""

from __future__ import annotations

import dataclasses
from typing import Any

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.config import ModelConfig

OPEN_CLIP_COMMIT = "89fb801f1e6087880e951fc8354b8a2077b79c6d"


@dataclasses.dataclass(frozen=True)
class Arch:
    """One open_clip model config, as its JSON states it (None: open_clip's default)."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    text_heads: int
    vision_head_width: int = 64
    vision_mlp_ratio: float = 4.0
    quick_gelu: bool = False

    def model_fields(self) -> dict[str, Any]:
        """Our `ModelConfig` fields of this architecture (77 tokens, CLIP's vocabulary)."""
        return dict(
            embed_dim=self.embed_dim, image_size=self.image_size, patch_size=self.patch_size,
            vision_width=self.vision_width, vision_layers=self.vision_layers,
            vision_heads=self.vision_width // self.vision_head_width,
            vision_mlp_dim=int(self.vision_width * self.vision_mlp_ratio),
            context_length=77, vocab_size=49408, text_width=self.text_width,
            text_layers=self.text_layers, text_heads=self.text_heads,
            text_mlp_dim=int(self.text_width * 4.0),
            act="quick_gelu" if self.quick_gelu else "gelu",
        )


def _pair(**fields: Any) -> dict[str, Arch]:
    """NAME and NAME-quickgelu: open_clip ships both configs with the same shapes."""
    return {"": Arch(**fields), "-quickgelu": Arch(**fields, quick_gelu=True)}


_B = dict(embed_dim=512, vision_width=768, vision_layers=12, text_width=512, text_layers=12,
          text_heads=8)
_L = dict(embed_dim=768, vision_width=1024, vision_layers=24, text_width=768, text_layers=12,
          text_heads=12)
_H = dict(embed_dim=1024, vision_width=1280, vision_layers=32, vision_head_width=80,
          text_width=1024, text_layers=24, text_heads=16)
_FAMILIES = {
    "ViT-B-32": _pair(**_B, image_size=224, patch_size=32),
    "ViT-B-16": _pair(**_B, image_size=224, patch_size=16),
    "ViT-L-14": _pair(**_L, image_size=224, patch_size=14),
    "ViT-L-14-336": _pair(**_L, image_size=336, patch_size=14),
    "ViT-H-14": _pair(**_H, image_size=224, patch_size=14),
}
ARCHITECTURES: dict[str, Arch] = {
    name + suffix: arch for name, pair in _FAMILIES.items() for suffix, arch in pair.items()
}
ARCHITECTURES.update({
    "ViT-B-16-plus-240": Arch(embed_dim=640, image_size=240, patch_size=16, vision_width=896,
                              vision_layers=12, text_width=640, text_layers=12, text_heads=10),
    "ViT-H-14-378-quickgelu": Arch(**_H, image_size=378, patch_size=14, quick_gelu=True),
    "ViT-g-14": Arch(embed_dim=1024, image_size=224, patch_size=14, vision_width=1408,
                     vision_layers=40, vision_head_width=88, vision_mlp_ratio=4.3637,
                     text_width=1024, text_layers=24, text_heads=16),
    "ViT-bigG-14": Arch(embed_dim=1280, image_size=224, patch_size=14, vision_width=1664,
                        vision_layers=48, vision_head_width=104, vision_mlp_ratio=4.9231,
                        text_width=1280, text_layers=32, text_heads=20),
})
# What a weight file shows; it must agree with the named architecture.
_VISIBLE = ("embed_dim", "image_size", "patch_size", "vision_width", "vision_layers",
            "vision_mlp_dim", "text_width", "text_layers", "text_mlp_dim", "context_length",
            "vocab_size")


def get_arch(name: str) -> Arch:
    if name not in ARCHITECTURES:
        raise UserError(f"unknown open_clip architecture '{name}'; choose one of "
                        f"{sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def config_for(name: str, inferred: ModelConfig) -> ModelConfig:
    """`inferred` (read from the weights' shapes) with the named architecture's heads and
    activation; a shape that disagrees with the architecture is an error naming both."""
    fields = get_arch(name).model_fields()
    for key in _VISIBLE:
        if getattr(inferred, key) != fields[key]:
            raise UserError(f"the weights are not {name}: their {key} is "
                            f"{getattr(inferred, key)}, {name}'s is {fields[key]}")
    return dataclasses.replace(inferred, vision_heads=fields["vision_heads"],
                               text_heads=fields["text_heads"], act=fields["act"])
