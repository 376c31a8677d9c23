"""Convert OpenAI / open_clip / Hugging Face CLIP ViT weights to a MindSpore checkpoint, without torch.

    python -m clip.convert SRC DST.ckpt [--model NAME] [--dtype float32|float16]

SRC may be OpenAI's TorchScript `.pt` (fp16), a `torch.save` state dict (OpenAI or open_clip names, optionally
wrapped in {"state_dict": ...} and/or prefixed "module."), or a Hugging Face `CLIPModel` `.safetensors`.
The format is recognised from the file's bytes, the layout from the tensor names. The output uses OpenAI's
names, which are our model's parameter names, and carries the architecture, so `create_model(checkpoint=DST)`
builds the right model with no name. The architecture comes from --model (a name or an open_clip JSON config),
else from the source itself: OpenAI's TorchScript archive (QuickGELU), or an `open_clip_config.json` / Hugging
Face `config.json` beside SRC. A plain state dict says neither its activation nor its head count, so without
--model it is refused, naming the models whose shapes match.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import zipfile
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np

from clip.model import torch_archive
from clip.model.architectures import (PRESETS, CLIPConfig, candidates_for, expected_shapes, from_hugging_face,
                                      from_open_clip, get_config, infer_config, name_of, preprocess_of, read_json)
from launcher.errors import UserError, exit_on_user_error, path, text

OUTPUT_DTYPES = ("float32", "float16")
# Tensors that checkpoints carry but that are not parameters (sizes, masks, index buffers).
NON_PARAMETERS = ("input_resolution", "context_length", "vocab_size", "attn_mask", "position_ids")
OPENAI_ANCHOR = "visual.conv1.weight"
HF_ANCHOR = "vision_model.embeddings.patch_embedding.weight"
TIMM_ANCHOR = "visual.trunk.patch_embed.proj.weight"  # open_clip's SigLIP: a timm trunk, the text tower under text.
LAYOUT_NAMES = {"openai": "OpenAI/open_clip names", "hf": "Hugging Face names", "timm": "open_clip timm-trunk names"}


@dataclass(frozen=True)
class Conversion:
    """What a conversion did, for the one-line summary."""
    source_format: str
    layout: str
    model: str
    source_dtype: str
    tensors: Dict[str, np.ndarray]
    ignored: Tuple[str, ...]
    config: Optional[CLIPConfig] = None
    architecture_from: str = "--model"


# ---------------------------------------------------------------------------------------------- pure logic

def find_layout(names: List[str], source: str) -> Tuple[str, str]:
    """(layout, prefix): 'openai' or 'hf', and the wrapper prefix such as 'state_dict.' or 'module.'."""
    candidates = []
    for name in names:
        for layout, anchor in (("openai", OPENAI_ANCHOR), ("hf", HF_ANCHOR), ("timm", TIMM_ANCHOR)):
            if name == anchor or name.endswith("." + anchor):
                candidates.append((len(name), layout, name[: len(name) - len(anchor)]))
    if not candidates:
        if any(n.endswith("visual.attnpool.c_proj.weight") for n in names):
            raise UserError(f"{source}: ResNet CLIP (RN50 and relatives) is not supported; only ViT models")
        shown = ", ".join(sorted(names)[:4]) or "none"
        raise UserError(f"{source}: unknown layout: no CLIP ViT weights found (expected '{OPENAI_ANCHOR}', "
                        f"Hugging Face '{HF_ANCHOR}' or open_clip SigLIP '{TIMM_ANCHOR}'; first tensors: {shown})")
    _, layout, prefix = min(candidates)
    return layout, prefix


def strip_prefix(tensors: Dict[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    return {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}


_HF_RENAMES = (
    (r"^text_model\.embeddings\.token_embedding\.weight$", "token_embedding.weight"),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),  # sic: Hugging Face's spelling
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)
_HF_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_HF_PROJECTIONS = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}


def hf_to_openai(tensors: Dict[str, np.ndarray], source: str) -> Dict[str, np.ndarray]:
    """Hugging Face CLIPModel names -> OpenAI names: q/k/v packed into in_proj, projections transposed
    (HF stores them as Linear weights [embed, width], OpenAI as matrices [width, embed])."""
    out: Dict[str, np.ndarray] = {}
    qkv: Dict[Tuple[str, str], Dict[str, np.ndarray]] = {}
    hf_block: Dict[Tuple[str, str], str] = {}
    for name, value in tensors.items():
        if name in _HF_PROJECTIONS:
            out[_HF_PROJECTIONS[name]] = value.T
            continue
        new = name
        for pattern, replacement in _HF_RENAMES:
            new = re.sub(pattern, replacement, new)
        match = _HF_QKV.match(new)
        if match:
            block, part, kind = match.groups()
            qkv.setdefault((block, kind), {})[part] = value
            hf_block[(block, kind)] = name.rsplit(".self_attn.", 1)[0]
        else:
            out[new] = value
    for (block, kind), parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise UserError(f"{source}: missing tensor "
                            f"{hf_block[(block, kind)]}.self_attn.{missing[0]}_proj.{kind}")
        shapes = {parts[p].shape for p in "qkv"}
        if len(shapes) != 1:
            raise UserError(f"{source}: {hf_block[(block, kind)]}.self_attn q/k/v_proj.{kind} have different shapes "
                            f"{[parts[p].shape for p in 'qkv']}")
        out[f"{block}.attn.in_proj_{kind}"] = np.concatenate([parts[p] for p in "qkv"], axis=0)
    return out


_TIMM_RENAMES = (
    (r"^visual\.trunk\.pos_embed$", "visual.positional_embedding"),
    (r"^visual\.trunk\.patch_embed\.proj\.", "visual.conv1."),
    (r"^visual\.trunk\.blocks\.", "visual.transformer.resblocks."),
    (r"^visual\.trunk\.norm\.", "visual.ln_post."),
    (r"^visual\.trunk\.attn_pool\.", "visual.attn_pool."),
    (r"^text\.", ""),
    (r"\.norm1\.", ".ln_1."),
    (r"\.norm2\.", ".ln_2."),
    (r"\.attn\.qkv\.(weight|bias)$", r".attn.in_proj_\1"),
    (r"\.attn\.proj\.", ".attn.out_proj."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
)


def timm_to_openai(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """open_clip SigLIP names (timm trunk under visual.trunk., custom text under text.) -> our names: timm's
    blocks take OpenAI's block names (the packed qkv is in_proj already), the position embedding loses its
    batch axis, the attention pool keeps timm's names but for its MLP."""
    out = {}
    for name, value in tensors.items():
        new = name
        for pattern, replacement in _TIMM_RENAMES:
            new = re.sub(pattern, replacement, new)
        if new == "visual.positional_embedding" and value.ndim == 3 and value.shape[0] == 1:
            value = value[0]
        out[new] = value
    return out


def linear_text_projection(tensors: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """open_clip's text projection as an nn.Linear (`proj_bias`, SigLIP): weight [embed, width] -> OpenAI's
    matrix [width, embed], its bias -> text_projection_bias."""
    if "text_projection.weight" not in tensors:
        return tensors
    out = {k: v for k, v in tensors.items() if k not in ("text_projection.weight", "text_projection.bias")}
    out["text_projection"] = tensors["text_projection.weight"].T
    if "text_projection.bias" in tensors:
        out["text_projection_bias"] = tensors["text_projection.bias"]
    return out


def is_non_parameter(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in NON_PARAMETERS


def resolve_config(tensors: Dict[str, np.ndarray], model: Optional[str], source: str,
                   described: Optional[Tuple[str, CLIPConfig]] = None) -> Tuple[str, CLIPConfig, str]:
    """(name, config, where the architecture came from): --model, else what the source says about itself
    (`described`: TorchScript archive or a config file beside it), else a one-line refusal naming the models
    whose shapes match (the activation and head count are not in the shapes)."""
    if model is not None:
        config = get_config(model)
        return (name_of(config) if model.endswith(".json") else model), config, "--model"
    if described is not None:
        how, config = described
        return name_of(config), config, how
    shapes = {name: value.shape for name, value in tensors.items()}
    matching = candidates_for(shapes)
    if matching:
        shown = ", ".join(f"{n} ({PRESETS[n].activation})" for n in matching)
        raise UserError(f"{source}: a plain state dict does not say its activation or head count; pass --model "
                        f"with one of the models whose shapes match: {shown}")
    try:
        found = infer_config(shapes)  # a UserError here names the malformed parameter: the more useful line
    except ValueError:
        found = None
    what = (f" (vision {found.vision_width} wide x {found.vision_layers}, patch {found.patch_size}, {found.image_size} px; "
            f"text {found.text_width} wide x {found.text_layers})" if found else "")
    raise UserError(f"{source}: no known model has these shapes{what}; pass --model with an open_clip JSON "
                    f"config describing it")


def described_by_source(path: str, source_format: str, layout: str, tensors) -> Optional[Tuple[str, CLIPConfig]]:
    """The architecture the source states: OpenAI's TorchScript archive (QuickGELU, shapes as OpenAI built
    them), or `open_clip_config.json` / Hugging Face `config.json` in SRC's directory."""
    if source_format == "TorchScript archive":
        shapes = {name: value.shape for name, value in tensors.items()}
        return "the OpenAI TorchScript archive", infer_config(shapes)
    folder = os.path.dirname(os.path.abspath(path))
    order = ("config.json", "open_clip_config.json") if layout == "hf" else ("open_clip_config.json", "config.json")
    for filename in order:
        candidate = os.path.join(folder, filename)
        if not os.path.isfile(candidate):
            continue
        data = read_json(candidate)
        if filename == "open_clip_config.json":
            model_cfg = data.get("model_cfg") if isinstance(data, dict) else None
            config = from_open_clip(model_cfg, candidate)
            if "preprocess_cfg" in data:  # the Hub's file says how the weights were trained to see images
                config = replace(config, preprocess=preprocess_of(data["preprocess_cfg"], config.image_size, candidate))
            return candidate, config
        if isinstance(data, dict) and "vision_config" in data and "text_config" in data:
            return candidate, from_hugging_face(data, candidate)
    return None


OPENAI_PARAMETERS = ("visual.", "transformer.", "token_embedding.", "positional_embedding", "ln_final.",
                     "text_projection", "logit_scale", "logit_bias")


def check_dtypes(tensors: Dict[str, np.ndarray], source: str) -> None:
    """Weights are floating point whatever the architecture: checked before asking which one it is."""
    for name, value in tensors.items():
        if name.startswith(OPENAI_PARAMETERS) and not np.issubdtype(value.dtype, np.floating):
            raise UserError(f"{source}: tensor {name} has dtype {value.dtype}, expected floating point")


def check_shapes(tensors: Dict[str, np.ndarray], config: CLIPConfig, model: str, source: str) -> None:
    """Every parameter present with the expected shape, else a one-line error naming the first problem."""
    expected = expected_shapes(config)
    for name, shape in expected.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise UserError(f"{source}: tensor {name} has shape {tuple(tensors[name].shape)}, "
                            f"{model} expects {shape}")
        if name in tensors and not np.issubdtype(tensors[name].dtype, np.floating):
            raise UserError(f"{source}: tensor {name} has dtype {tensors[name].dtype}, expected floating point")
    missing = [name for name in expected if name not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{source}: missing tensor {missing[0]}{more} required by {model}")


def to_openai_parameters(tensors: Dict[str, np.ndarray], source: str, model: Optional[str],
                         source_format: str = "tensors") -> Conversion:
    """Flat tensors of any supported layout -> checked OpenAI-named parameters for one configuration."""
    layout, prefix = find_layout(list(tensors), source)
    tensors = strip_prefix(tensors, prefix)
    if layout == "hf":
        tensors = hf_to_openai(tensors, source)
    elif layout == "timm":
        tensors = timm_to_openai(tensors)
    tensors = linear_text_projection(tensors)
    kept = {name: value for name, value in tensors.items() if not is_non_parameter(name)}
    check_dtypes(kept, source)
    described = None if model is not None else described_by_source(source, source_format, layout, kept)
    model, config, how = resolve_config(kept, model, source, described)
    check_shapes(kept, config, model, source)
    expected = expected_shapes(config)
    params = {name: kept[name] for name in expected}
    ignored = tuple(sorted(name for name in kept if name not in expected))
    dtypes = sorted({str(value.dtype) for value in params.values()})
    layout_name = LAYOUT_NAMES[layout]
    if prefix:
        layout_name += f" under '{prefix}'"
    return Conversion(source_format, layout_name, model, "/".join(dtypes), params, ignored, config, how)


# ---------------------------------------------------------------------------------------------- I/O edges

def read_tensors(path: str) -> Tuple[str, Dict[str, np.ndarray]]:
    """(format description, flat name -> array) for a PyTorch archive or a safetensors file."""
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"{path} is not a file")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if head[:4] == torch_archive.ZIP_MAGIC:
        kind = "TorchScript archive" if _is_torchscript(path) else "PyTorch zip archive"
        return kind, torch_archive.load(path)
    if head[:1] == b"\x80":
        return "legacy PyTorch file", torch_archive.load(path)
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors", _read_safetensors(path)
    raise UserError(f"{path}: unknown format (expected a PyTorch .pt/.pth/.bin archive or .safetensors)")


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


MAX_SAFETENSORS_HEADER = 100 << 20  # the header only lists tensors; safetensors itself allows 100 MB


def check_safetensors_header(path: str) -> None:
    """The JSON header's size, shape and tensor sizes, checked before the library maps the file."""
    import json
    import struct

    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        total = os.fstat(f.fileno()).st_size
        if size > min(MAX_SAFETENSORS_HEADER, total - 8):
            raise UserError(f"{path}: safetensors header claims {size} bytes, the file has {total} "
                            f"(damaged or not a safetensors file)")
        try:
            header = json.loads(f.read(size))
        except RecursionError:
            raise UserError(f"{path}: safetensors header is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: damaged safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: damaged safetensors header (expected a JSON object)")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
            raise UserError(f"{path}: tensor {name!r} has a bad shape {shape!r:.60}")
        if math.prod(shape) > torch_archive.MAX_ELEMENTS:
            raise UserError(f"{path}: tensor {name!r} claims {math.prod(shape)} elements "
                            f"(limit {torch_archive.MAX_ELEMENTS})")


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    check_safetensors_header(path)
    try:
        return load_file(path)
    except TypeError as exc:
        if "bfloat16" in str(exc):
            raise UserError(f"{path}: bfloat16 safetensors are not supported (numpy has no bfloat16); "
                            f"save the model in float32 or float16") from None
        raise UserError(f"{path}: damaged safetensors file ({exc})") from None
    except (SafetensorError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: damaged or truncated safetensors file ({reason})") from None


def write_checkpoint(params: Dict[str, np.ndarray], dst: str, dtype: str, config: Optional[CLIPConfig] = None) -> None:
    """Atomic: MindSpore writes a temporary file in the destination directory, which then replaces DST."""
    import mindspore as ms

    from clip.model import weights

    weights.write(dst, [{"name": name, "data": ms.Tensor(np.asarray(value, dtype=dtype, order="C"))}
                           for name, value in params.items()], architecture=config)


def check_destination(dst: str) -> None:
    if not dst.endswith(".ckpt"):
        raise UserError(f"output {dst} must end with .ckpt (MindSpore loads only .ckpt files)")
    directory = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(directory):
        raise UserError(f"output directory {directory} does not exist")
    if os.path.isdir(dst):
        raise UserError(f"output {dst} is a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"output directory {directory}: permission denied")


def convert(src: str, dst: str, model: Optional[str] = None, dtype: str = "float32") -> Conversion:
    """Read SRC, map and check its tensors, write DST; nothing is written unless everything checks out."""
    if dtype not in OUTPUT_DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}")
    if model is not None:
        get_config(model)
    check_destination(dst)
    source_format, tensors = read_tensors(src)
    result = to_openai_parameters(tensors, src, model, source_format)
    write_checkpoint(result.tensors, dst, dtype, result.config)
    return result


def summary(result: Conversion, dst: str, dtype: str) -> str:
    line = (f"wrote {dst}: {len(result.tensors)} tensors for {result.model} from {result.source_format} "
            f"({result.layout}, {result.source_dtype} -> {dtype}); architecture ({result.config.activation}) "
            f"from {result.architecture_from}")
    if result.model == "custom" and result.architecture_from.startswith("OpenAI"):
        line += "; no preset has these shapes, head counts assumed width/64"
    if result.ignored:
        shown = ", ".join(result.ignored[:3]) + (", ..." if len(result.ignored) > 3 else "")
        line += f"; ignored {len(result.ignored)} tensors not in the model ({shown})"
    return line


class _ArgumentParser(argparse.ArgumentParser):
    """Usage mistakes are user errors too: one line and exit code 2, like every other problem."""

    def error(self, message):
        raise UserError(f"{message} (see clip-convert --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="clip-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=path("maybe_file"), help="OpenAI .pt, PyTorch state dict, or Hugging Face .safetensors")
    parser.add_argument("dst", type=path("output_file"), help="MindSpore checkpoint to write (.ckpt)")
    parser.add_argument("--model", type=text(nonempty=True),
                        help="model name (clip.list_models(), docs/models.md) or open_clip JSON config; "
                                        "needed for plain state dicts, which do not say their activation")
    parser.add_argument("--dtype", default="float32", type=text(nonempty=True),
                        help=f"stored parameter dtype: {' or '.join(OUTPUT_DTYPES)}")
    return parser


@exit_on_user_error
def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    result = convert(args.src, args.dst, args.model, args.dtype)
    print(summary(result, args.dst, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
