"""Loading a diffusion pipeline: a hub id, a diffusers folder or a single-file checkpoint, once per process.

Which pipeline a checkpoint needs is read from its own tensor names (the safetensors header: no
weights are read to decide):
- `conditioner.embedders.1.model.*` (OpenCLIP bigG beside CLIP-L): SDXL base;
- `conditioner.embedders.0.model.*` alone: the SDXL refiner (not supported: it refines, it does not
  generate from a prompt);
- `cond_stage_model.model.*` (OpenCLIP ViT-H): SD 2.x;
- `cond_stage_model.transformer.*` (CLIP ViT-L): SD 1.x.
A diffusers folder says it in model_index.json (and its text encoder's width: 1024 is SD 2.x).

A single file holds weights only; diffusers' `from_single_file` also needs the pipeline's
configuration (the component configs and the tokenizer, a few kB): the family's reference repo
from the local Hugging Face cache (downloaded once with --download), or `config=`, any diffusers
folder of the same family on disk. That is how the tests load their tiny checkpoints offline.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

FAMILY_CONFIGS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
DEFAULT_SIZE = {"sd1": 512, "sd2": 768, "sdxl": 1024}
FAMILY_NAMES = {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}
MAX_HEADER = 100 << 20  # a safetensors header larger than this is not one


class RunnerError(Exception):
    """A regeneration that cannot start: a model that is not there, a file that is no checkpoint."""


# --- what a checkpoint is ----------------------------------------------------------------------------


def checkpoint_tensors(path: str | Path) -> dict[str, list[int]]:
    """Tensor name -> shape of a checkpoint, from the safetensors header alone (.ckpt files are
    unpickled with weights_only=True, memory-mapped)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        with open(path, "rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            if size > MAX_HEADER:
                raise RunnerError(f"{path.name}: not a safetensors file (header of {size:,} bytes)")
            header = json.loads(handle.read(size))
        return {name: info["shape"] for name, info in header.items() if name != "__metadata__"}
    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # pickles that are not plain tensors are refused, never executed
        raise RunnerError(f"{path.name}: cannot read as a checkpoint with weights_only=True ({error})") from None
    data = data.get("state_dict", data) if isinstance(data, dict) else {}
    return {name: list(value.shape) for name, value in data.items() if hasattr(value, "shape")}


def family_of_tensors(tensors: dict) -> str:
    names = tensors.keys()
    has = lambda prefix: any(name.startswith(prefix) for name in names)  # noqa: E731
    if has("conditioner.embedders.1.model."):
        return "sdxl"
    if has("conditioner.embedders.0.model."):
        raise RunnerError("an SDXL refiner checkpoint: it refines images, it does not generate from a prompt")
    if has("cond_stage_model.model."):
        return "sd2"
    if has("cond_stage_model.transformer."):
        return "sd1"
    raise RunnerError("not a Stable Diffusion 1.x, 2.x or SDXL checkpoint (no text encoder in the usual place)")


def family_of_folder(folder: str | Path) -> str:
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        raise RunnerError(f"{folder}: not a diffusers folder (no readable model_index.json)") from None
    name = index.get("_class_name", "")
    if "XL" in name:
        return "sdxl"
    if "StableDiffusion" not in name:
        raise RunnerError(f"{folder}: a {name}, not a Stable Diffusion 1.x, 2.x or SDXL pipeline")
    try:
        width = json.loads((folder / "text_encoder" / "config.json").read_text()).get("hidden_size")
    except (OSError, ValueError):
        width = None
    return "sd2" if width == 1024 else "sd1"


# --- the loaded model ---------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    pipe: object
    family: str  # sd1, sd2, sdxl
    source: str  # hub, folder, single-file
    name: str  # what the user and the image call it: the hub id, the folder or file name
    path: str | None = None
    sha256: str | None = None
    revision: str | None = None  # the hub commit
    config_source: str | None = None  # single files: where the pipeline configuration came from
    device: str = "cpu"
    dtype: str = "float32"
    compiled: bool = False
    scheduler_config: dict = field(default_factory=dict)  # the model's own scheduler config, which every sampler starts from
    _img2img: object = field(default=None, repr=False)
    loras: dict = field(default_factory=dict)  # adapter name -> LoRA file loaded into this pipeline
    embeddings: dict = field(default_factory=dict)  # token -> embedding file

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    def img2img(self):
        """The image-to-image pipeline over the same components (no second copy of the weights)."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str) -> str:
    """fp16 where it is fast (CUDA, Apple GPUs); fp32 on the CPU, where half precision is slower."""
    return "float16" if device in ("cuda", "mps") else "float32"


_LOADED: dict[tuple, LoadedModel] = {}


def forget_models() -> None:
    _LOADED.clear()


def _torch_dtype(name: str):
    import torch

    try:
        return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[name]
    except KeyError:
        raise RunnerError(f"dtype {name!r}: one of float16, bfloat16, float32") from None


def _hub_revision(repo_id: str) -> str | None:
    """The commit of a cached hub snapshot (its folder name), without any network."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # an id that is no repo id
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _extra_kwargs(family: str) -> dict:
    # A1111 has no safety checker either; the runner regenerates prompts that are already public
    return {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}


def load_model(model: str, device: str | None = None, dtype: str | None = None, config: str | None = None,
               download: bool = False, compile: bool = False, hash_cache=None) -> LoadedModel:
    """A pipeline for MODEL (hub id, diffusers folder, or .safetensors/.ckpt file), loaded once per
    process for each (model, device, dtype)."""
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    path = Path(model).expanduser()
    key = (str(path.resolve()) if path.exists() else model, device, dtype, config, compile)
    if key in _LOADED:
        return _LOADED[key]
    torch_dtype = _torch_dtype(dtype)
    try:
        if path.is_file():
            loaded = _load_single_file(path, torch_dtype, config, download, hash_cache)
        elif path.is_dir():
            family = family_of_folder(path)
            pipe = _pipeline_class(family).from_pretrained(str(path), torch_dtype=torch_dtype, local_files_only=True, **_extra_kwargs(family))
            loaded = LoadedModel(pipe, family, "folder", path.name, path=str(path.resolve()))
        elif path.suffix.lower() in (".safetensors", ".ckpt") or "/" not in model:
            raise RunnerError(f"{model}: no such file or folder")
        else:
            loaded = _load_hub(model, torch_dtype, download)
    except RunnerError:
        raise
    except OSError as error:
        raise RunnerError(f"cannot load {model}: {error}") from None
    loaded.device, loaded.dtype = device, dtype
    _prepare(loaded, device, compile)
    _LOADED[key] = loaded
    return loaded


def _load_single_file(path: Path, torch_dtype, config, download, hash_cache) -> LoadedModel:
    from spellbook.runner.checkpoints import file_sha256

    family = family_of_tensors(checkpoint_tensors(path))
    source = config or FAMILY_CONFIGS[family]
    try:
        pipe = _pipeline_class(family).from_single_file(
            str(path), config=source, local_files_only=not download, torch_dtype=torch_dtype, **_extra_kwargs(family)
        )
    except (OSError, ValueError, EnvironmentError) as error:
        if config is None and not download:
            raise RunnerError(
                f"{path.name} is a {FAMILY_NAMES[family]} checkpoint; to load it diffusers needs that pipeline's configuration "
                f"(a few kB, no weights), which is not in the local Hugging Face cache. Pass --config with a diffusers folder "
                f"of the same family, or run once with --download to cache {source}'s configuration. ({error})"
            ) from None
        raise RunnerError(f"cannot load {path.name}: {error}") from None
    return LoadedModel(pipe, family, "single-file", path.name, path=str(path.resolve()), sha256=file_sha256(path, hash_cache),
                       config_source=str(source))


def _load_hub(repo_id: str, torch_dtype, download: bool) -> LoadedModel:
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(repo_id, local_files_only=not download)
    except Exception as error:
        hint = "" if download else " (it is not in the local Hugging Face cache: run once with --download, or pass a folder or checkpoint file)"
        raise RunnerError(f"cannot load {repo_id}{hint}: {error}") from None
    name = index.get("_class_name", "")
    family = "sdxl" if "XL" in name else "sd1"
    pipe = _pipeline_class(family).from_pretrained(repo_id, torch_dtype=torch_dtype, local_files_only=not download, **_extra_kwargs(family))
    if family == "sd1" and getattr(pipe.text_encoder.config, "hidden_size", None) == 1024:
        family = "sd2"
    return LoadedModel(pipe, family, "hub", repo_id, revision=_hub_revision(repo_id))


def _prepare(loaded: LoadedModel, device: str, compile: bool) -> None:
    """On the device, progress bars off, scaled-dot-product attention (diffusers' default on
    torch 2: AttnProcessor2_0), channels-last UNet on CUDA, and torch.compile when asked."""
    import torch

    pipe = loaded.pipe
    loaded.scheduler_config = dict(pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if hasattr(pipe.unet, "set_default_attn_processor") and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        pipe.unet.set_default_attn_processor()
    if device == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
        loaded.compiled = True


def attention_kind(pipe) -> str:
    processors = {type(p).__name__ for p in getattr(pipe.unet, "attn_processors", {}).values()}
    return ",".join(sorted(processors)) or "unknown"
