"""open_clip 3.3.0 itself as the reference of the architecture tests: models built by `open_clip.create_model(NAME,
pretrained=None)` (random weights, no download) or from a model-config dict, and their state dicts saved as the
files users convert. open_clip imports torchvision only for names it does not use here; the PyPI torchvision
wheels do not load beside the CPU torch on this machine, so a minimal stand-in is registered when it is missing
(bench/openclip_anchor.py uses this one too)."""
import enum
import importlib.machinery
import importlib.util
import sys
import types

TRANSFORM_NAMES = ("Compose", "Normalize", "Resize", "CenterCrop", "RandomResizedCrop", "ToTensor",
                   "ColorJitter", "Grayscale")


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _unavailable(name: str):
    class Unavailable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"torchvision.{name} is a stand-in (tests/openclip_reference.py); "
                               f"install a working torchvision to use open_clip's image transforms")
    Unavailable.__name__ = Unavailable.__qualname__ = name.rsplit(".", 1)[-1]
    return Unavailable


def _functional_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    def unavailable(*args, **kwargs):
        raise RuntimeError(f"torchvision.transforms.functional.{name} is a stand-in (tests/openclip_reference.py)")
    return unavailable


def _module_getattr(module: str):
    def getattr_(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(f"{module}.{name}")
    return getattr_


def install_torchvision_stand_in() -> bool:
    """Register the stand-in modules unless a real torchvision is importable; True when installed."""
    if "torchvision" in sys.modules:
        return False
    try:
        if importlib.util.find_spec("torchvision") is not None:
            import torchvision  # noqa: F401  (a real one that loads wins)
            return False
    except Exception:  # a broken real torchvision: fall through to the stand-in
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
    modules = {name: types.ModuleType(name) for name in
               ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
                "torchvision.transforms.functional", "torchvision.datasets")}
    modules["torchvision.ops.misc"].FrozenBatchNorm2d = _unavailable("ops.misc.FrozenBatchNorm2d")
    transforms = modules["torchvision.transforms"]
    transforms.InterpolationMode = InterpolationMode
    for name in TRANSFORM_NAMES:
        setattr(transforms, name, _unavailable(f"transforms.{name}"))
    modules["torchvision.transforms.functional"].__getattr__ = _functional_getattr
    modules["torchvision.transforms.functional"].InterpolationMode = InterpolationMode
    # timm (SigLIP's image tower) imports dataset classes at import time; building a model never uses them
    modules["torchvision.datasets"].__getattr__ = _module_getattr("datasets")
    modules["torchvision"].datasets = modules["torchvision.datasets"]
    modules["torchvision"].ops = modules["torchvision.ops"]
    modules["torchvision"].transforms = transforms
    modules["torchvision.ops"].misc = modules["torchvision.ops.misc"]
    transforms.functional = modules["torchvision.transforms.functional"]
    modules["torchvision"].__version__ = "0.0+stand-in"
    # transformers (imported by open_clip when installed) asks importlib.util.find_spec("torchvision"), which
    # raises on a module without a spec
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules.update(modules)
    return True


def import_open_clip():
    """open_clip without its Hugging Face text towers: they import transformers at import time (about 0.9 s of
    CPU per process), which no model built here uses; HFTokenizer still imports it when one is made."""
    install_torchvision_stand_in()
    hidden = "transformers" not in sys.modules
    if hidden:
        sys.modules["transformers"] = None  # open_clip.hf_model catches the ImportError this raises
    try:
        import open_clip
    finally:
        if hidden:
            del sys.modules["transformers"]
    return open_clip


def create(name_or_cfg, seed: int = 0, **overrides):
    """open_clip's model by name or model-config dict (vision_cfg / text_cfg overrides merged in), random
    weights from `seed`, float32, eval mode."""
    import copy

    import torch

    open_clip = import_open_clip()
    torch.manual_seed(seed)
    if isinstance(name_or_cfg, str) and not overrides:
        model = open_clip.create_model(name_or_cfg, pretrained=None)
    else:
        cfg = copy.deepcopy(open_clip.get_model_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg)
        for key in ("vision_cfg", "text_cfg"):
            cfg[key].update(overrides.get(key, {}))
        cfg.update({k: v for k, v in overrides.items() if k not in ("vision_cfg", "text_cfg")})
        model = (open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP)(**cfg)
    with torch.no_grad():  # open_clip initialises some tensors to constants; make every value matter
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.02 * torch.randn_like(p))
    return model.float().eval()


def register_timm_vit(name: str, **model_args) -> str:
    """Register (once) a timm ViT entry point `name` built from `model_args` (those of timm's own entry points,
    plus img_size), so an open_clip config can name a reduced SigLIP trunk as its timm_model_name."""
    install_torchvision_stand_in()
    import timm.models
    from timm.models.vision_transformer import _create_vision_transformer

    if not timm.models.is_model(name):
        def entry(pretrained=False, **kwargs):
            return _create_vision_transformer(name, pretrained=pretrained, **dict(model_args, **kwargs))
        entry.__name__ = name
        timm.models.register_model(entry)
    return name


def model_cfg(name: str) -> dict:
    return import_open_clip().get_model_config(name)


def embeddings(model, pixels, tokens):
    import numpy as np
    import torch

    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(pixels)).numpy()
        text = model.encode_text(torch.from_numpy(np.asarray(tokens, np.int64))).numpy()
    return image, text


def state_dict(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
