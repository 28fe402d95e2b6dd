"""Weight import from and export to PyTorch CLIP checkpoints.

    python -m reasonclip_jax.convert import --format hf --input HF_DIR --output CKPT_DIR
    python -m reasonclip_jax.convert import --format openai --input ViT-B-32.pt --output CKPT_DIR
    python -m reasonclip_jax.convert export --format hf --input CKPT_DIR --output HF_DIR
    python -m reasonclip_jax.convert export --format openai --input CKPT_DIR --output w.safetensors
    python -m reasonclip_jax.convert import --format openai --arch ViT-H-14 --input h14.bin \
        --output CKPT_DIR

`hf`: a transformers `CLIPModel` or `SiglipModel` directory (config.json + model.safetensors,
sharded safetensors with an index, or pytorch_model.bin); SigLIP and the fixed-resolution
SigLIP 2 checkpoints are `SiglipModel`s, and their tokenizer files are kept in the checkpoint
(`CKPT_DIR/tokenizer/`) for training, evaluation and export. `openai`: OpenAI's released TorchScript
`.pt` archives or plain state dicts in OpenAI/open_clip naming (`.pt` or `.safetensors`); a
plain state dict does not show its attention heads or activation, so it needs `--arch`
(open_clip's name, `models/open_clip_archs.py`) or `--vision-heads/--text-heads/--act`.
Safetensors are read and written without torch; only `.pt`/`.bin` files need it.

Inputs and outputs may be in a bucket (`gs://...`): checkpoints through orbax, other files
through `reasonclip_jax.paths` (an export is written locally, then copied into place).

Export takes a model checkpoint, a run's `best/` or a trainer workdir (its latest step) and
writes, beside the weights, where they came from (`PROVENANCE_FILE` in an HF directory,
`<file>.provenance.json` beside an OpenAI file): the checkpoint, its step, the selection
metric of a `best/`, the model config, the run's training config (`TRAIN_CONFIG_FILE`, which
the trainer writes into its workdir at each start; null for weights outside a run), the
project version, the weights' sha256 and the UTC time. An HF export also carries the
tokenizer and image processor files (`models/hf_processor.py`), so
`AutoProcessor.from_pretrained` works.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from reasonclip_jax import __version__, paths
from reasonclip_jax.errors import UserError
from reasonclip_jax.models import hf_processor, open_clip_archs, weight_maps
from reasonclip_jax.models.clip import CLIP, ModelConfig, param_shapes
from reasonclip_jax.models.siglip_tokenizer import TOKENIZER_FILES
from reasonclip_jax.tools import cli
from reasonclip_jax.train import checkpoint

HF_MODEL_TYPES = ("clip", "siglip")  # CLIPModel, SiglipModel
TOKENIZER_DIR = "tokenizer"  # in a SigLIP checkpoint: the HF tokenizer files it came with
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
PROVENANCE_FILE = "reasonclip_export.json"  # in an HF export; an OpenAI file: FILE.provenance.json
TRAIN_CONFIG_FILE = "config.json"  # the trainer's config, written into its workdir


# ------------------------------------------------------------------------- reading files


def _torch_to_numpy(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    import torch

    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu()
            out[k] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    return out


def read_torch_file(path: str) -> dict[str, np.ndarray]:
    """A `.pt`/`.bin` file: a TorchScript archive (OpenAI's release) or a pickled state dict."""
    return _read_torch_file(path)[0]


def _read_torch_file(path: str) -> tuple[dict[str, np.ndarray], bool]:
    """(state dict, whether the file is a TorchScript archive)."""
    try:
        import torch
    except ImportError as e:
        raise UserError(f"reading {path} needs torch: pip install torch") from e
    try:  # OpenAI's own loader tries TorchScript first too.
        return _torch_to_numpy(torch.jit.load(path, map_location="cpu").state_dict()), True
    except Exception:
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a PyTorch checkpoint ({type(e).__name__})") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # open_clip training checkpoints
    if not isinstance(obj, Mapping):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict")
    state = _torch_to_numpy(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, False


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file ({e})") from None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise UserError(f"weights file {path} does not exist")
    if os.path.getsize(path) == 0:
        raise UserError(f"weights file {path} is empty")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith((".pt", ".pth", ".bin")):
        return read_torch_file(path)
    raise UserError(f"{path}: unknown weights file type; expected .safetensors, .pt or .bin")


def read_hf_dir(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict, config.json) of a transformers CLIPModel directory."""
    if not os.path.isdir(path):
        raise UserError(f"{path} is not a directory; --format hf expects a CLIPModel directory")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"{path} has no config.json; not a Hugging Face model directory")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("model_type") == "siglip2":
        raise UserError(f"{config_path}: model_type 'siglip2' (NaFlex, variable resolution) "
                        "is not supported; use a fixed-resolution SigLIP 2 (SiglipModel)")
    if config.get("model_type") not in HF_MODEL_TYPES:
        raise UserError(f"{config_path}: model_type is {config.get('model_type')!r}, not one "
                        f"of {list(HF_MODEL_TYPES)}")
    for name in HF_WEIGHT_FILES:
        weights = os.path.join(path, name)
        if not os.path.isfile(weights):
            continue
        if name.endswith(".index.json"):
            with open(weights) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            state: dict[str, np.ndarray] = {}
            for shard in files:
                state.update(read_state_dict(os.path.join(path, shard)))
            return state, config
        return read_state_dict(weights), config
    raise UserError(f"{path} has none of {list(HF_WEIGHT_FILES)}")


# ------------------------------------------------------------------------- import / export


def _flat_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    shapes = traverse_util.flatten_dict(param_shapes(CLIP(config)), sep="/")
    return {k: tuple(v.shape) for k, v in shapes.items()}


def import_state_dict(fmt: str, state: Mapping[str, np.ndarray],
                      hf_config: Mapping[str, Any] | None = None,
                      **overrides: Any) -> tuple[dict[str, Any], ModelConfig]:
    """External state dict -> (nested float32 params, inferred ModelConfig)."""
    config = weight_maps.infer_config(fmt, state, hf_config, **overrides)
    shapes = _flat_shapes(config)
    flat = weight_maps.to_ours(fmt, config, state, shapes)
    missing = set(shapes) - set(flat)
    if missing:  # the map must cover the whole model
        raise AssertionError(f"conversion map misses parameters {sorted(missing)}")
    return traverse_util.unflatten_dict(flat, sep="/"), config


def export_state_dict(fmt: str, params: Any, config: ModelConfig,
                      dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Nested params -> external state dict. Category heads (training only) are dropped."""
    if fmt == "hf" and config.family == "clip" and config.logit_bias_init is not None:
        raise UserError("a model with a logit bias has no Hugging Face CLIPModel equivalent")
    flat = traverse_util.flatten_dict(params, sep="/")
    return weight_maps.to_theirs(fmt, config, flat, dtype)


def _openai_architecture(path: str, state: Mapping[str, np.ndarray], torchscript: bool,
                         arch: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that fix what OpenAI/open_clip weights do not show (heads, activation):
    open_clip's table for `arch`; OpenAI's conventions for its TorchScript archives; else
    all three must be given."""
    inferred = weight_maps.infer_config("openai", state, None)  # "not a CLIP checkpoint"?
    hidden = ("vision_heads", "text_heads", "act")
    given = [k for k in hidden if overrides.get(k) is not None]
    if arch:
        if given:
            raise UserError(f"--arch {arch} fixes {', '.join(hidden)}; do not also give "
                            f"{', '.join(given)}")
        config = open_clip_archs.config_for(arch, inferred)
        return {**overrides, **{k: getattr(config, k) for k in hidden}}
    if torchscript:  # OpenAI's release: QuickGELU, width // 64 heads
        return overrides
    if len(given) < len(hidden):
        raise UserError(f"{path}: its weights do not show the attention heads or the "
                        f"activation; pass --arch, one of {sorted(open_clip_archs.ARCHITECTURES)}"
                        ", or all of --vision-heads, --text-heads and --act")
    return overrides


def import_weights(fmt: str, path: str, output: str, arch: str | None = None,
                   **overrides: Any) -> ModelConfig:
    """Reads external weights at `path`, writes a project checkpoint to `output`. `arch`
    (format openai): the open_clip architecture name (`models/open_clip_archs.py`)."""
    if arch and fmt != "openai":
        raise UserError(f"--arch names an open_clip architecture: use it with --format openai "
                        f"(format {fmt} reads the architecture from its config)")
    path = paths.local_copy(path)  # torch and safetensors read local files
    if fmt == "hf":
        state, hf_config = read_hf_dir(path)
    elif fmt == "openai":
        if path.endswith((".pt", ".pth", ".bin")) and os.path.isfile(path) and os.path.getsize(
                path):
            state, torchscript = _read_torch_file(path)
        else:
            state, torchscript = read_state_dict(path), False
        hf_config = None
        overrides = _openai_architecture(path, state, torchscript, arch, overrides)
    else:
        raise UserError(f"unknown format '{fmt}'; choose one of {list(weight_maps.FORMATS)}")
    tokenizer_files = []
    if fmt == "hf" and hf_config.get("model_type") == "siglip":
        tokenizer_files = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(path, n))]
        overrides.setdefault("tokenizer", _siglip_tokenizer_kind(path))
    params, config = import_state_dict(fmt, state, hf_config, **overrides)
    checkpoint.save_model(output, params, config)
    if tokenizer_files:
        target = paths.Path(output) / TOKENIZER_DIR
        target.mkdir(parents=True)
        for name in tokenizer_files:
            paths.copy_file(os.path.join(path, name), target / name)
    return config


def _siglip_tokenizer_kind(path: str) -> str | None:
    """"gemma" or "siglip" from the directory's tokenizer files; None: from the vocabulary."""
    config_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            name = str(json.load(f).get("tokenizer_class", ""))
        if name.startswith("Gemma"):
            return "gemma"
        if name.startswith("Siglip"):
            return "siglip"
    if os.path.isfile(os.path.join(path, "spiece.model")):
        return "siglip"
    return None


def tokenizer_dir_of(step_dir: str, explicit: str | None = None) -> str | None:
    """Where a checkpoint's SigLIP tokenizer files are: `explicit`, its own `tokenizer/`, or
    that of the checkpoint its run started from (`init_from` of the run's config)."""
    if explicit:
        return paths.local_copy(explicit)
    own = paths.join(step_dir, TOKENIZER_DIR)
    if paths.Path(own).is_dir():
        return paths.local_copy(own)
    best = checkpoint.read_best_metric(step_dir) is not None
    _, train_config = _training_config(_run_workdir(step_dir, best))
    init_from = (train_config or {}).get("init_from")
    if init_from:
        candidate = paths.join(checkpoint.resolve_step_dir(init_from), TOKENIZER_DIR)
        if paths.Path(candidate).is_dir():
            return paths.local_copy(candidate)
    return None


def _write_state(state: Mapping[str, np.ndarray], path: str) -> None:
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(dict(state), path, metadata={"format": "pt"})
    elif path.endswith((".pt", ".pth", ".bin")):
        import torch

        torch.save({k: torch.from_numpy(np.array(v, order="C")) for k, v in state.items()}, path)
    else:
        raise UserError(f"{path}: unknown output type; use .safetensors or .pt")


def export_weights(fmt: str, ckpt: str, output: str, dtype: str = "float32",
                   tokenizer_dir: str | None = None) -> dict[str, Any]:
    """Writes a project checkpoint as an HF CLIPModel directory (weights, config, tokenizer
    and image processor) or an OpenAI-named file, with its provenance; returns that."""
    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise UserError(f"unknown export dtype '{dtype}'; choose float32 or float16")
    if fmt not in weight_maps.FORMATS:
        raise UserError(f"unknown format '{fmt}'; choose one of {list(weight_maps.FORMATS)}")
    target = paths.Path(output)
    if fmt == "hf" and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{output} exists and is not an empty directory")
    if fmt == "openai" and target.is_dir():
        raise UserError(f"{output} is a directory; --format openai writes one file")
    step_dir = checkpoint.resolve_step_dir(ckpt)  # once: a run may commit a newer step meanwhile
    params, config = checkpoint.load_model(step_dir)
    state = export_state_dict(fmt, params, config, np_dtype)
    info = provenance(ckpt, step_dir, config, fmt, dtype)  # fails, if at all, before writing
    if fmt == "hf" and config.family == "siglip":  # its tokenizer files must exist first
        tokenizer_dir = tokenizer_dir_of(step_dir, tokenizer_dir)
        if config.tokenizer != "clip" and not tokenizer_dir:
            raise UserError(f"{ckpt} has no tokenizer files for its {config.tokenizer} "
                            "tokenizer; pass --tokenizer DIR (spiece.model or tokenizer.json)")
    # A bucket gets the files once they are complete (written locally, then copied).
    with paths.staged(output) as local:
        if fmt == "hf":
            os.makedirs(local, exist_ok=True)
            if config.family == "siglip":
                hf_processor.write_siglip_processor_files(local, config, tokenizer_dir)
            else:
                hf_processor.write_processor_files(local, config)
            hf_config = weight_maps.hf_config_json(config)
            hf_config["torch_dtype"] = dtype
            with open(os.path.join(local, "config.json"), "w") as f:
                json.dump(hf_config, f, indent=2)
            weights = os.path.join(local, "model.safetensors")
            record = os.path.join(local, PROVENANCE_FILE)
        else:
            weights, record = local, f"{local}.provenance.json"
        _write_state(state, weights)
        info["weights"] = {os.path.basename(weights): {"sha256": _sha256(weights)}}
        with open(record, "w") as f:
            json.dump(info, f, indent=2)
        if fmt == "openai" and paths.is_remote(output):  # the record beside the file
            paths.copy_file(record, f"{output}.provenance.json")
    return info


# ------------------------------------------------------------------------- provenance


def _run_workdir(step_dir: str, from_best: bool) -> str | None:
    """The trainer workdir a resolved checkpoint belongs to, if it is part of a run."""
    parent = os.path.dirname(step_dir)
    if os.path.basename(step_dir).isdigit() and os.path.basename(parent) in ("checkpoints",
                                                                              "best"):
        return os.path.dirname(parent)  # WORKDIR/checkpoints/STEP, WORKDIR/best/STEP
    if from_best:  # WORKDIR/best, as written before best/ held steps
        return parent
    return None


def _training_config(workdir: str | None) -> tuple[str | None, Any]:
    path = paths.join(workdir, TRAIN_CONFIG_FILE) if workdir else None
    if path is None or not paths.Path(path).is_file():
        return None, None
    try:
        return path, json.loads(paths.Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"training config {path} is not readable JSON ({e})") from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(ckpt: str, step_dir: str, config: ModelConfig, fmt: str, dtype: str
               ) -> dict[str, Any]:
    """Where exported weights came from: checkpoint, step, selection metric, configs.
    `export_weights` adds the weights' sha256 once they are written."""
    best = checkpoint.read_best_metric(step_dir)
    if best is not None:
        step = int(best["step"])
        metric, value = checkpoint.selection(best)
        selection = {"metric": metric, "value": value}
    else:
        name = os.path.basename(step_dir)
        step, selection = (int(name) if name.isdigit() else None), None
    workdir = _run_workdir(step_dir, best is not None)
    train_config_path, train_config = _training_config(workdir)
    return {
        "format": fmt,
        "dtype": dtype,
        "source": {
            "checkpoint": paths.absolute(ckpt),
            "resolved": step_dir,
            "description": checkpoint.describe(step_dir),
            "step": step,
            "selection": selection,  # null unless the weights are a run's best/
            "workdir": workdir,
        },
        "model_config": config.to_dict(),
        "training_config": train_config,  # null: no run, or no TRAIN_CONFIG_FILE in it
        "training_config_file": train_config_path,
        "project": {"name": "reasonclip_jax", "version": __version__},
        "exported_at_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m reasonclip_jax.convert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="PyTorch weights -> project checkpoint")
    exp = sub.add_parser("export", help="project checkpoint -> PyTorch weights")
    for p in (imp, exp):
        p.add_argument("--format", required=True, help="hf or openai")
        p.add_argument("--input", required=True)
        p.add_argument("--output", required=True)
    imp.add_argument("--arch", help="openai format: the open_clip architecture (ViT-B-32, "
                     "ViT-B-32-quickgelu, ViT-H-14, ViT-g-14, ViT-bigG-14, ...)")
    imp.add_argument("--vision-heads", type=int, help="openai format without --arch")
    imp.add_argument("--text-heads", type=int, help="openai format without --arch")
    imp.add_argument("--act", help="openai format without --arch: quick_gelu (OpenAI), gelu")
    exp.add_argument("--dtype", default="float32", help="float32 or float16")
    exp.add_argument("--tokenizer", help="SigLIP: the directory of its tokenizer files "
                     "(default: the checkpoint's, or its run's init_from's, tokenizer/)")
    return parser.parse_args(argv)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "import":
        config = import_weights(args.format, args.input, args.output, arch=args.arch,
                                vision_heads=args.vision_heads, text_heads=args.text_heads,
                                act=args.act)
        print(f"wrote {args.output}: {config}")
    else:
        info = export_weights(args.format, args.input, args.output, args.dtype,
                              args.tokenizer)
        step = info["source"]["step"]
        print(f"exported step {step if step is not None else '(unknown)'}: "
              f"{info['source']['description']}")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
