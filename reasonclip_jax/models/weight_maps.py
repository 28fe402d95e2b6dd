"""Parameter-name maps between this project's CLIP / SigLIP and PyTorch checkpoints.

Two external namings: Hugging Face `CLIPModel` or `SiglipModel` ("hf", by the model's
family) and OpenAI / open_clip ("openai", CLIP only).
Each map entry pairs one external tensor with one or more of our parameters plus the two
per-tensor hooks that convert between them (transposes, head splits, the fused q/k/v of
OpenAI's attention). Everything works on numpy arrays: no torch. Conversion is strict:
a missing, unexpected or mis-shaped tensor raises `UserError` naming the key and shapes.

    python -m reasonclip_jax.convert import --format hf --input HF_DIR --output CKPT_DIR
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from reasonclip_jax.errors import UserError
from reasonclip_jax.models import siglip
from reasonclip_jax.models.clip import ModelConfig

FORMATS = ("hf", "openai")
# Buffers some checkpoints carry that are not parameters (OpenAI's TorchScript archives
# store the architecture's sizes; older HF checkpoints store position ids).
_IGNORED = re.compile(r"(^|\.)(position_ids|input_resolution|context_length|vocab_size)$")

Hook = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One external tensor <-> our parameter(s). `{i}` in `theirs` marks a layer index."""

    theirs: str
    ours: tuple[str, ...]
    to_theirs: Hook  # our arrays (one layer's slice when layered) -> their array
    to_ours: Hook  # their array -> tuple of our arrays
    layers: int = 0  # >0: repeated per layer; our arrays are stacked on axis 0


def _same(x: Any) -> Any:
    return x


def _t(x: Any) -> Any:
    return x.T


def _one(fn: Hook) -> Hook:
    return lambda x: (fn(x),)


def _block_maps(ours: str, theirs: str, layers: int, width: int, heads: int,
                fmt: str) -> list[TensorMap]:
    """The residual blocks of one tower."""
    hd = width // heads
    qkv_in = lambda w: w.T.reshape(width, heads, hd)  # torch (out, in) -> (in, heads, hd)
    qkv_out = lambda k: k.reshape(width, width).T
    m = [
        (f"{theirs}.{{i}}.{'layer_norm1' if fmt == 'hf' else 'ln_1'}.weight", "ln_1/scale"),
        (f"{theirs}.{{i}}.{'layer_norm1' if fmt == 'hf' else 'ln_1'}.bias", "ln_1/bias"),
        (f"{theirs}.{{i}}.{'layer_norm2' if fmt == 'hf' else 'ln_2'}.weight", "ln_2/scale"),
        (f"{theirs}.{{i}}.{'layer_norm2' if fmt == 'hf' else 'ln_2'}.bias", "ln_2/bias"),
    ]
    maps = [TensorMap(t, (f"{ours}/{o}",), _same, _one(_same), layers) for t, o in m]
    mlp = ("fc1", "fc2") if fmt == "hf" else ("c_fc", "c_proj")
    for name, o in zip(mlp, ("c_fc", "c_proj"), strict=True):
        maps += [
            TensorMap(f"{theirs}.{{i}}.mlp.{name}.weight", (f"{ours}/mlp/{o}/kernel",),
                      _t, _one(_t), layers),
            TensorMap(f"{theirs}.{{i}}.mlp.{name}.bias", (f"{ours}/mlp/{o}/bias",),
                      _same, _one(_same), layers),
        ]
    attn = "self_attn" if fmt == "hf" else "attn"
    maps += [
        TensorMap(f"{theirs}.{{i}}.{attn}.out_proj.weight", (f"{ours}/attn/out/kernel",),
                  lambda k: k.reshape(width, width).T,
                  _one(lambda w: w.T.reshape(heads, hd, width)), layers),
        TensorMap(f"{theirs}.{{i}}.{attn}.out_proj.bias", (f"{ours}/attn/out/bias",),
                  _same, _one(_same), layers),
    ]
    qkv = [f"{ours}/attn/{n}" for n in ("query", "key", "value")]
    if fmt == "hf":
        for short, o in zip("qkv", qkv, strict=True):
            maps += [
                TensorMap(f"{theirs}.{{i}}.self_attn.{short}_proj.weight", (f"{o}/kernel",),
                          qkv_out, _one(qkv_in), layers),
                TensorMap(f"{theirs}.{{i}}.self_attn.{short}_proj.bias", (f"{o}/bias",),
                          lambda b: b.reshape(width), _one(lambda b: b.reshape(heads, hd)),
                          layers),
            ]
    else:  # OpenAI's nn.MultiheadAttention fuses q, k, v along the output dim.
        concat = lambda *xs: _concat(xs)
        maps += [
            TensorMap(f"{theirs}.{{i}}.attn.in_proj_weight", tuple(f"{o}/kernel" for o in qkv),
                      lambda *ks: concat(*(qkv_out(k) for k in ks)),
                      lambda w: tuple(qkv_in(p) for p in _split3(w)), layers),
            TensorMap(f"{theirs}.{{i}}.attn.in_proj_bias", tuple(f"{o}/bias" for o in qkv),
                      lambda *bs: concat(*(b.reshape(width) for b in bs)),
                      lambda b: tuple(p.reshape(heads, hd) for p in _split3(b)), layers),
        ]
    return maps


def _concat(xs: tuple[Any, ...]) -> Any:
    if isinstance(xs[0], np.ndarray):
        return np.concatenate(xs, axis=0)
    return jax.numpy.concatenate(xs, axis=0)


def _split3(x: Any) -> tuple[Any, Any, Any]:
    n = x.shape[0] // 3
    return x[:n], x[n : 2 * n], x[2 * n :]


def _conv_to_ours(w: Any) -> Any:
    return w.transpose(2, 3, 1, 0)  # torch (out, in, kh, kw) -> flax (kh, kw, in, out)


def _conv_to_theirs(k: Any) -> Any:
    return k.transpose(3, 2, 0, 1)


def _siglip_maps(c: ModelConfig) -> list[TensorMap]:
    """transformers' `SiglipModel`. The pooling head's attention is torch's
    nn.MultiheadAttention (q, k, v fused as in OpenAI's blocks); scale and bias are [1]."""
    plain = lambda theirs, ours: TensorMap(theirs, (ours,), _same, _one(_same))
    trans = lambda theirs, ours: TensorMap(theirs, (ours,), _t, _one(_t))
    scalar = lambda theirs, ours: TensorMap(theirs, (ours,), lambda x: x.reshape(1),
                                            _one(lambda x: x.reshape(())))
    v, t, w = "vision_model", "text_model", c.vision_width
    heads, hd = c.vision_heads, c.vision_width // c.vision_heads
    head = [f"visual/head/attention/{n}" for n in ("query", "key", "value")]
    maps = [
        TensorMap(f"{v}.embeddings.patch_embedding.weight", ("visual/patch_embedding/kernel",),
                  _conv_to_theirs, _one(_conv_to_ours)),
        plain(f"{v}.embeddings.patch_embedding.bias", "visual/patch_embedding/bias"),
        plain(f"{v}.embeddings.position_embedding.weight", "visual/positional_embedding"),
        plain(f"{v}.post_layernorm.weight", "visual/ln_post/scale"),
        plain(f"{v}.post_layernorm.bias", "visual/ln_post/bias"),
        TensorMap(f"{v}.head.probe", ("visual/head/probe",), lambda x: x.reshape(1, 1, w),
                  _one(lambda x: x.reshape(w))),
        TensorMap(f"{v}.head.attention.in_proj_weight", tuple(f"{o}/kernel" for o in head),
                  lambda *ks: _concat(tuple(k.reshape(w, w).T for k in ks)),
                  lambda x: tuple(p.T.reshape(w, heads, hd) for p in _split3(x))),
        TensorMap(f"{v}.head.attention.in_proj_bias", tuple(f"{o}/bias" for o in head),
                  lambda *bs: _concat(tuple(b.reshape(w) for b in bs)),
                  lambda x: tuple(p.reshape(heads, hd) for p in _split3(x))),
        TensorMap(f"{v}.head.attention.out_proj.weight", ("visual/head/attention/out/kernel",),
                  lambda k: k.reshape(w, w).T, _one(lambda x: x.T.reshape(heads, hd, w))),
        plain(f"{v}.head.attention.out_proj.bias", "visual/head/attention/out/bias"),
        plain(f"{v}.head.layernorm.weight", "visual/head/ln/scale"),
        plain(f"{v}.head.layernorm.bias", "visual/head/ln/bias"),
        trans(f"{v}.head.mlp.fc1.weight", "visual/head/mlp/c_fc/kernel"),
        plain(f"{v}.head.mlp.fc1.bias", "visual/head/mlp/c_fc/bias"),
        trans(f"{v}.head.mlp.fc2.weight", "visual/head/mlp/c_proj/kernel"),
        plain(f"{v}.head.mlp.fc2.bias", "visual/head/mlp/c_proj/bias"),
        plain(f"{t}.embeddings.token_embedding.weight", "text/token_embedding"),
        plain(f"{t}.embeddings.position_embedding.weight", "text/positional_embedding"),
        plain(f"{t}.final_layer_norm.weight", "text/ln_final/scale"),
        plain(f"{t}.final_layer_norm.bias", "text/ln_final/bias"),
        trans(f"{t}.head.weight", "text/head/kernel"),
        plain(f"{t}.head.bias", "text/head/bias"),
        scalar("logit_scale", "logit_scale"),
        scalar("logit_bias", "logit_bias"),
    ]
    maps += _block_maps("visual/transformer/layers", f"{v}.encoder.layers", c.vision_layers,
                        c.vision_width, c.vision_heads, "hf")
    maps += _block_maps("text/transformer/layers", f"{t}.encoder.layers", c.text_layers,
                        c.text_width, c.text_heads, "hf")
    return maps


def tensor_maps(fmt: str, c: ModelConfig) -> list[TensorMap]:
    """The full map for an architecture in one external naming."""
    if fmt not in FORMATS:
        raise UserError(f"unknown weight format '{fmt}'; choose one of {list(FORMATS)}")
    if c.family == "siglip":
        if fmt != "hf":
            raise UserError(f"SigLIP weights convert with --format hf (transformers' "
                            f"SiglipModel), not '{fmt}'")
        return _siglip_maps(c)
    plain = lambda theirs, ours: TensorMap(theirs, (ours,), _same, _one(_same))
    trans = lambda theirs, ours: TensorMap(theirs, (ours,), _t, _one(_t))
    conv = TensorMap("", ("visual/conv1/kernel",), _conv_to_theirs, _one(_conv_to_ours))
    if fmt == "hf":
        v, t = "vision_model", "text_model"
        maps = [
            plain(f"{v}.embeddings.class_embedding", "visual/class_embedding"),
            dataclasses.replace(conv, theirs=f"{v}.embeddings.patch_embedding.weight"),
            plain(f"{v}.embeddings.position_embedding.weight", "visual/positional_embedding"),
            plain(f"{v}.pre_layrnorm.weight", "visual/ln_pre/scale"),
            plain(f"{v}.pre_layrnorm.bias", "visual/ln_pre/bias"),
            plain(f"{v}.post_layernorm.weight", "visual/ln_post/scale"),
            plain(f"{v}.post_layernorm.bias", "visual/ln_post/bias"),
            trans("visual_projection.weight", "visual/proj"),
            plain(f"{t}.embeddings.token_embedding.weight", "text/token_embedding"),
            plain(f"{t}.embeddings.position_embedding.weight", "text/positional_embedding"),
            plain(f"{t}.final_layer_norm.weight", "text/ln_final/scale"),
            plain(f"{t}.final_layer_norm.bias", "text/ln_final/bias"),
            trans("text_projection.weight", "text/text_projection"),
            plain("logit_scale", "logit_scale"),
        ]
        vblocks, tblocks = f"{v}.encoder.layers", f"{t}.encoder.layers"
    else:
        maps = [
            plain("visual.class_embedding", "visual/class_embedding"),
            dataclasses.replace(conv, theirs="visual.conv1.weight"),
            plain("visual.positional_embedding", "visual/positional_embedding"),
            plain("visual.ln_pre.weight", "visual/ln_pre/scale"),
            plain("visual.ln_pre.bias", "visual/ln_pre/bias"),
            plain("visual.ln_post.weight", "visual/ln_post/scale"),
            plain("visual.ln_post.bias", "visual/ln_post/bias"),
            plain("visual.proj", "visual/proj"),
            plain("token_embedding.weight", "text/token_embedding"),
            plain("positional_embedding", "text/positional_embedding"),
            plain("ln_final.weight", "text/ln_final/scale"),
            plain("ln_final.bias", "text/ln_final/bias"),
            plain("text_projection", "text/text_projection"),
            plain("logit_scale", "logit_scale"),
        ]
        if c.logit_bias_init is not None:
            maps.append(plain("logit_bias", "logit_bias"))
        vblocks, tblocks = "visual.transformer.resblocks", "transformer.resblocks"
    maps += _block_maps("visual/transformer/layers", vblocks, c.vision_layers,
                        c.vision_width, c.vision_heads, fmt)
    maps += _block_maps("text/transformer/layers", tblocks, c.text_layers,
                        c.text_width, c.text_heads, fmt)
    return maps


def _layer_keys(m: TensorMap) -> list[str]:
    return [m.theirs.format(i=i) for i in range(m.layers)] if m.layers else [m.theirs]


def expected_shapes(fmt: str, c: ModelConfig, ours: Mapping[str, tuple[int, ...]]
                    ) -> dict[str, tuple[int, ...]]:
    """External key -> shape, derived from our parameter shapes through the hooks."""
    out = {}
    for m in tensor_maps(fmt, c):
        shapes = [ours[o][1:] if m.layers else ours[o] for o in m.ours]
        structs = [jax.ShapeDtypeStruct(s, np.float32) for s in shapes]
        shape = tuple(jax.eval_shape(m.to_theirs, *structs).shape)
        for key in _layer_keys(m):
            out[key] = shape
    return out


def check_names_and_shapes(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple]
                           ) -> None:
    """Raises `UserError` on the first missing, unexpected or mis-shaped tensor."""
    for key, shape in expected.items():
        if key not in state:
            raise UserError(f"missing tensor '{key}' (expected shape {shape})")
        if tuple(state[key].shape) != tuple(shape):
            raise UserError(
                f"tensor '{key}' has shape {tuple(state[key].shape)}, expected {tuple(shape)}"
            )
    for key in state:
        if key not in expected and not _IGNORED.search(key):
            raise UserError(f"unexpected tensor '{key}' with shape {tuple(state[key].shape)}")


def to_ours(fmt: str, c: ModelConfig, state: Mapping[str, np.ndarray],
            our_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """External state dict -> our flat params {'visual/conv1/kernel': array, ...} (float32)."""
    check_names_and_shapes(state, expected_shapes(fmt, c, our_shapes))
    flat: dict[str, np.ndarray] = {}
    for m in tensor_maps(fmt, c):
        per_layer = [m.to_ours(np.asarray(state[k], np.float32)) for k in _layer_keys(m)]
        for j, o in enumerate(m.ours):
            parts = [p[j] for p in per_layer]
            flat[o] = np.stack(parts) if m.layers else parts[0]
    return flat


def to_theirs(fmt: str, c: ModelConfig, flat: Mapping[str, np.ndarray],
              dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Our flat params -> external state dict. Extra params (category heads) are not exported."""
    state: dict[str, np.ndarray] = {}
    for m in tensor_maps(fmt, c):
        arrays = [np.asarray(flat[o]) for o in m.ours]
        for i, key in enumerate(_layer_keys(m)):
            parts = [a[i] for a in arrays] if m.layers else arrays
            state[key] = np.array(m.to_theirs(*parts), dtype=dtype, order="C")
    return state


# ---------------------------------------------------------------- architecture inference


def _count_layers(state: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(mm.group(1)) for k in state if (mm := pat.match(k))}
    if not idx:
        raise UserError(f"not a CLIP checkpoint: no tensors under '{prefix}.N.'")
    if idx != set(range(len(idx))):
        raise UserError(f"layer indices under '{prefix}' are not contiguous: {sorted(idx)}")
    return len(idx)


def _need(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state:
        raise UserError(f"not a CLIP checkpoint in this format: missing tensor '{key}'")
    return tuple(state[key].shape)


def infer_config(fmt: str, state: Mapping[str, Any], hf_config: Mapping[str, Any] | None = None,
                 **overrides: Any) -> ModelConfig:
    """The architecture from tensor shapes. Head counts (not visible in shapes) come from
    the HF config.json, else OpenAI's rule width // 64; `overrides` replace any field.
    A `SiglipModel` config.json gives the whole architecture (`siglip.config_from_hf`);
    `to_ours` then checks every tensor against it."""
    if fmt == "hf" and hf_config and hf_config.get("model_type") == "siglip":
        config = siglip.config_from_hf(hf_config)
        return dataclasses.replace(config, **{k: v for k, v in overrides.items()
                                              if v is not None})
    if fmt == "hf":
        v, t = "vision_model", "text_model"
        vw = _need(state, f"{v}.embeddings.class_embedding")[0]
        patch = _need(state, f"{v}.embeddings.patch_embedding.weight")[-1]
        npos = _need(state, f"{v}.embeddings.position_embedding.weight")[0]
        vlayers = _count_layers(state, f"{v}.encoder.layers")
        vmlp = _need(state, f"{v}.encoder.layers.0.mlp.fc1.weight")[0]
        vocab, tw = _need(state, f"{t}.embeddings.token_embedding.weight")
        ctx = _need(state, f"{t}.embeddings.position_embedding.weight")[0]
        tlayers = _count_layers(state, f"{t}.encoder.layers")
        tmlp = _need(state, f"{t}.encoder.layers.0.mlp.fc1.weight")[0]
        embed = _need(state, "text_projection.weight")[0]
    elif fmt == "openai":
        vw = _need(state, "visual.class_embedding")[0]
        patch = _need(state, "visual.conv1.weight")[-1]
        npos = _need(state, "visual.positional_embedding")[0]
        vlayers = _count_layers(state, "visual.transformer.resblocks")
        vmlp = _need(state, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
        vocab, tw = _need(state, "token_embedding.weight")
        ctx = _need(state, "positional_embedding")[0]
        tlayers = _count_layers(state, "transformer.resblocks")
        tmlp = _need(state, "transformer.resblocks.0.mlp.c_fc.weight")[0]
        embed = _need(state, "text_projection")[1]
    else:
        raise UserError(f"unknown weight format '{fmt}'; choose one of {list(FORMATS)}")
    grid = round((npos - 1) ** 0.5)
    if grid * grid != npos - 1:
        raise UserError(f"vision position embedding has {npos} rows: not 1 + a square grid")
    fields: dict[str, Any] = dict(
        embed_dim=embed, image_size=grid * patch, patch_size=patch, vision_width=vw,
        vision_layers=vlayers, vision_heads=max(vw // 64, 1), vision_mlp_dim=vmlp,
        context_length=ctx, vocab_size=vocab, text_width=tw, text_layers=tlayers,
        text_heads=max(tw // 64, 1), text_mlp_dim=tmlp,
    )
    if fmt == "openai" and "logit_bias" in state:
        fields["logit_bias_init"] = 0.0
    if hf_config:
        vc, tc = hf_config.get("vision_config", {}), hf_config.get("text_config", {})
        fields["vision_heads"] = vc.get("num_attention_heads", fields["vision_heads"])
        fields["text_heads"] = tc.get("num_attention_heads", fields["text_heads"])
        act = tc.get("hidden_act", "quick_gelu")
        if vc.get("hidden_act", act) != act:
            raise UserError("towers with different activations are not supported")
        fields["act"] = act
        fields["layer_norm_eps"] = tc.get("layer_norm_eps", 1e-5)
        eos = tc.get("eos_token_id", 49407)
        if eos != 2:  # 2 is the legacy value, for which HF pools at argmax(ids) as OpenAI does
            fields["eot_token_id"] = eos
        if "logit_scale_init_value" in hf_config:
            fields["logit_scale_init"] = float(hf_config["logit_scale_init_value"])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    for tower in ("vision", "text"):
        w, h = fields[f"{tower}_width"], fields[f"{tower}_heads"]
        if w % h:
            raise UserError(f"{tower} width {w} is not divisible by {h} heads")
    return ModelConfig(**fields)


# Special-token ids of each SigLIP tokenizer, written into an exported text config.
_SIGLIP_TOKEN_IDS = {"siglip": dict(pad_token_id=1, bos_token_id=None, eos_token_id=1),
                     "gemma": dict(pad_token_id=0, bos_token_id=2, eos_token_id=1),
                     "clip": dict(pad_token_id=0, bos_token_id=49406, eos_token_id=49407)}


def hf_siglip_config_json(c: ModelConfig) -> dict[str, Any]:
    """A transformers `SiglipConfig` dict for `SiglipModel.from_pretrained`."""
    act = {v: k for k, v in siglip.HF_ACTIVATIONS.items()}[c.act]
    common = dict(hidden_act=act, layer_norm_eps=c.layer_norm_eps, attention_dropout=0.0)
    return {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "initializer_factor": 1.0,
        "text_config": dict(
            model_type="siglip_text_model", vocab_size=c.vocab_size, hidden_size=c.text_width,
            intermediate_size=c.text_mlp_dim, num_hidden_layers=c.text_layers,
            num_attention_heads=c.text_heads, max_position_embeddings=c.context_length,
            projection_size=c.embed_dim, **_SIGLIP_TOKEN_IDS[c.tokenizer], **common,
        ),
        "vision_config": dict(
            model_type="siglip_vision_model", hidden_size=c.vision_width,
            intermediate_size=c.vision_mlp_dim, num_hidden_layers=c.vision_layers,
            num_attention_heads=c.vision_heads, image_size=c.image_size,
            patch_size=c.patch_size, num_channels=3, vision_use_head=True, **common,
        ),
        "torch_dtype": "float32",
    }


def hf_config_json(c: ModelConfig) -> dict[str, Any]:
    """A transformers `CLIPConfig` dict for `CLIPModel.from_pretrained` (for a SigLIP
    model, the `SiglipConfig` of `hf_siglip_config_json`)."""
    if c.family == "siglip":
        return hf_siglip_config_json(c)
    common = dict(hidden_act=c.act, layer_norm_eps=c.layer_norm_eps, projection_dim=c.embed_dim)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": c.embed_dim,
        "logit_scale_init_value": c.logit_scale_init,
        "text_config": dict(
            model_type="clip_text_model", vocab_size=c.vocab_size, hidden_size=c.text_width,
            intermediate_size=c.text_mlp_dim, num_hidden_layers=c.text_layers,
            num_attention_heads=c.text_heads, max_position_embeddings=c.context_length,
            bos_token_id=49406, eos_token_id=c.eot_token_id, pad_token_id=1, **common,
        ),
        "vision_config": dict(
            model_type="clip_vision_model", hidden_size=c.vision_width,
            intermediate_size=c.vision_mlp_dim, num_hidden_layers=c.vision_layers,
            num_attention_heads=c.vision_heads, image_size=c.image_size,
            patch_size=c.patch_size, num_channels=3, **common,
        ),
        "torch_dtype": "float32",
    }
