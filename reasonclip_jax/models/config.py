"""`ModelConfig`: the architecture of a two-tower model, CLIP or SigLIP, as one flat record.

It is saved with every checkpoint and inferred from the weights on import. `family` picks the
towers (`models/clip.py`, `models/siglip.py`) and `tokenizer` the text tokenizer
(`models/tokenizer.py` for "clip", `models/siglip_tokenizer.py` for "siglip" and
"gemma"). Checkpoints written before a field existed load with its default.

    python -c "from reasonclip_jax.models import clip; print(clip.get_preset('siglip-tiny'))"
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from reasonclip_jax.errors import UserError

FAMILIES = ("clip", "siglip")
TOKENIZERS = ("clip", "siglip", "gemma")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture; saved with every checkpoint, inferred from weights on import.

    For SigLIP, `embed_dim` is the image width (the attention-pooling head keeps it) and the
    size the text head projects to (`projection_size` in Hugging Face's config).
    """

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp_dim: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp_dim: int
    act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eot_token_id: int = 49407  # CLIP pools here; SigLIP pools the last position
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None  # a SigLIP-style learnable bias when set
    family: str = "clip"  # one of FAMILIES
    tokenizer: str = "clip"  # one of TOKENIZERS

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UserError(f"unknown model family '{self.family}'; choose one of {FAMILIES}")
        if self.tokenizer not in TOKENIZERS:
            raise UserError(f"unknown tokenizer '{self.tokenizer}'; choose one of {TOKENIZERS}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)
