"""The JSON (and one command-line) formats of the other generators, each turned into the raw
generation fields {prompt, negative_prompt, seed, steps, cfg, sampler, scheduler, width, height,
model, model_hash, generator, extra}. Values stay as the file wrote them; read_image_metadata checks
and converts them. Where each field comes from is listed per tool in docs/image_metadata.md.
"""
from __future__ import annotations

import json
import re
from pathlib import PurePosixPath, PureWindowsPath

from spellbook.ingest.readers.common import RowRejected


def parse_json(text, column: str):
    """JSON text -> value; NUL padding (TensorArt) and NaN tolerated, trailing commas retried."""
    if not isinstance(text, str):
        raise RowRejected(column, f"{column} metadata is not text")
    cleaned = text.strip().rstrip("\0").strip()
    try:
        return json.loads(cleaned)
    except RecursionError:
        raise RowRejected(column, f"{column} metadata is JSON nested too deeply") from None
    except json.JSONDecodeError as problem:
        first = problem
    try:  # SwarmUI's own documented example ends "}, }"
        return json.loads(re.sub(r",\s*([}\]])", r"\1", cleaned))
    except (json.JSONDecodeError, RecursionError):
        raise RowRejected(column, f"{column} metadata is not valid JSON: {first.msg}") from None


def parse_json_object(text, column: str) -> dict:
    data = parse_json(text, column)
    if not isinstance(data, dict):
        raise RowRejected(column, f"{column} metadata is not a JSON object")
    return data


def _rest(data: dict, used) -> dict:
    return {key: value for key, value in data.items() if key not in used}


def _pick(data: dict, *keys):
    for key in keys:
        if key in data and data[key] is not None:
            return data[key]
    return None


def _pair(value) -> tuple:
    """"(768, 1280)", "832 x 1216", "1024x1024", [w, h] -> (w, h)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return value[0], value[1]
    match = re.search(r"(\d+)\s*[,x×*]\s*(\d+)", str(value or ""))
    return (match.group(1), match.group(2)) if match else (None, None)


def _basename(path):
    if not isinstance(path, str) or not path:
        return path
    return PureWindowsPath(path).name if ("\\" in path or PureWindowsPath(path).drive) else PurePosixPath(path).name


# --- InvokeAI ------------------------------------------------------------------------------------


def from_invokeai(data: dict) -> dict:
    """InvokeAI 3+ `invokeai_metadata`: flat JSON; model is {name, hash, ...} (3.x: model_name)."""
    model = data.get("model")
    model_name = model_hash = None
    if isinstance(model, dict):
        model_name = model.get("name") or model.get("model_name")
        model_hash = model.get("hash")
    elif isinstance(model, str):
        model_name = model
    used = {"positive_prompt", "negative_prompt", "seed", "steps", "cfg_scale", "scheduler", "width", "height", "model"}
    return {
        "prompt": data.get("positive_prompt"),
        "negative_prompt": data.get("negative_prompt"),
        "seed": data.get("seed"),
        "steps": data.get("steps"),
        "cfg": data.get("cfg_scale"),
        "sampler": data.get("scheduler"),
        "width": data.get("width"),
        "height": data.get("height"),
        "model": model_name,
        "model_hash": model_hash,
        "generator": "InvokeAI",
        "extra": _rest(data, used),
    }


def split_invoke_prompt(text: str) -> tuple[str, str | None]:
    """Legacy InvokeAI wrote negative prompts inline: "a cat [blurry, text]"."""
    negatives = [part.strip(" ,") for part in re.findall(r"\[([^\[\]]*)\]", text)]
    positive = re.sub(r"\s*\[[^\[\]]*\]", "", text).strip(" ,")
    return positive, ", ".join(n for n in negatives if n) or None


def from_sd_metadata(data: dict) -> dict:
    """InvokeAI 2.x `sd-metadata`: {"model_weights"|"model_id", "model_hash", "image": {"prompt":
    [{"prompt", "weight"}] or text, "steps", "cfg_scale", "seed", "width", "height", "sampler", ...}}."""
    image = data.get("image") if isinstance(data.get("image"), dict) else {}
    prompt = image.get("prompt")
    if isinstance(prompt, list):  # weighted sub-prompts
        prompt = " ".join(str(p.get("prompt", "")) for p in prompt if isinstance(p, dict))
    positive, negative = split_invoke_prompt(prompt) if isinstance(prompt, str) else (None, None)
    used = {"prompt", "steps", "cfg_scale", "seed", "width", "height", "sampler"}
    extra = _rest(image, used)
    extra.update({k: v for k, v in data.items() if k in ("app_id", "app_version", "model")})
    return {
        "prompt": positive,
        "negative_prompt": negative,
        "seed": image.get("seed"),
        "steps": image.get("steps"),
        "cfg": image.get("cfg_scale"),
        "sampler": image.get("sampler"),
        "width": image.get("width"),
        "height": image.get("height"),
        "model": data.get("model_weights") or data.get("model_id"),
        "model_hash": data.get("model_hash"),
        "generator": "InvokeAI",
        "extra": extra,
    }


_DREAM_KEYS = {"-s": "steps", "--steps": "steps", "-S": "seed", "--seed": "seed", "-C": "cfg", "--cfg_scale": "cfg",
               "-A": "sampler", "--sampler": "sampler", "-W": "width", "--width": "width", "-H": "height", "--height": "height",
               "-m": "model", "--model": "model"}


def from_dream(text: str) -> dict:
    """InvokeAI 1.x `Dream`: "a prompt [negative]" -s 50 -S 42 -W 512 -H 768 -C 7.5 -A k_lms (flags
    without a value, like --hires_fix, are kept in extra)."""
    match = re.match(r'^\s*"(.*)"(.*)$', text, re.DOTALL)
    if not match:
        raise RowRejected("Dream", "InvokeAI Dream text is not '\"prompt\" -option value ...'")
    positive, negative = split_invoke_prompt(match.group(1))
    fields: dict = {"prompt": positive, "negative_prompt": negative, "generator": "InvokeAI", "extra": {}}
    tokens = match.group(2).split()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        value = tokens[index + 1] if index + 1 < len(tokens) and not re.match(r"-[A-Za-z-]", tokens[index + 1]) else None
        if token in _DREAM_KEYS and value is not None:
            fields[_DREAM_KEYS[token]] = value
        elif token.startswith("-"):
            fields["extra"][token.lstrip("-")] = value if value is not None else True
        index += 2 if value is not None else 1
    return fields


# --- Fooocus and RuinedFooocus -------------------------------------------------------------------


def from_fooocus(data: dict) -> dict:
    """Fooocus' own scheme: JSON in `parameters`; `prompt` is what the user typed (full_prompt adds
    the style and expansion text), resolution is "(width, height)"."""
    width, height = _pair(data.get("resolution"))
    used = {"prompt", "negative_prompt", "seed", "steps", "guidance_scale", "sampler", "resolution", "base_model", "base_model_hash"}
    return {
        "prompt": data.get("prompt"),
        "negative_prompt": data.get("negative_prompt"),
        "seed": data.get("seed"),
        "steps": data.get("steps"),
        "cfg": data.get("guidance_scale"),
        "sampler": data.get("sampler"),
        "scheduler": data.get("scheduler"),
        "width": width,
        "height": height,
        "model": data.get("base_model"),
        "model_hash": data.get("base_model_hash"),
        "generator": "Fooocus",
        "extra": _rest(data, used),
    }


def from_ruined_fooocus(data: dict) -> dict:
    """RuinedFooocus: {"Prompt", "Negative", "steps", "cfg", "width", "height", "seed",
    "sampler_name", "scheduler", "base_model_name", "base_model_hash", "loras", ..., "software"}."""
    used = {"Prompt", "Negative", "steps", "cfg", "width", "height", "seed", "sampler_name", "base_model_name", "base_model_hash"}
    return {
        "prompt": _pick(data, "Prompt", "prompt"),
        "negative_prompt": _pick(data, "Negative", "negative_prompt"),
        "seed": data.get("seed"),
        "steps": data.get("steps"),
        "cfg": data.get("cfg"),
        "sampler": data.get("sampler_name"),
        "scheduler": data.get("scheduler"),
        "width": data.get("width"),
        "height": data.get("height"),
        "model": data.get("base_model_name"),
        "model_hash": data.get("base_model_hash"),
        "generator": "RuinedFooocus",
        "extra": _rest(data, used),
    }


# --- NovelAI -------------------------------------------------------------------------------------


def from_novelai(info: dict, column: str = "Comment") -> dict:
    """NovelAI: `Description` (the prompt), `Source` ("NovelAI Diffusion V4.5 4BDE2A90": model and
    its hash) and `Comment` JSON (steps, sampler, seed, scale, uc, width, height, noise_schedule,
    and from V4 on v4_prompt / v4_negative_prompt with base and character captions)."""
    comment = info.get("Comment")
    comment = comment if isinstance(comment, dict) else parse_json_object(comment, column)
    v4_prompt = comment.get("v4_prompt") if isinstance(comment.get("v4_prompt"), dict) else {}
    v4_negative = comment.get("v4_negative_prompt") if isinstance(comment.get("v4_negative_prompt"), dict) else {}
    prompt = info.get("Description")
    if not isinstance(prompt, str) or not prompt:
        prompt = comment.get("prompt")
    if not isinstance(prompt, str):
        prompt = (v4_prompt.get("caption") or {}).get("base_caption") if isinstance(v4_prompt.get("caption"), dict) else None
    negative = comment.get("uc")
    if not isinstance(negative, str):
        caption = v4_negative.get("caption")
        negative = caption.get("base_caption") if isinstance(caption, dict) else None
    source = info.get("Source") if isinstance(info.get("Source"), str) else None
    model_hash = None
    if source:
        match = re.fullmatch(r"(.*?)\s+([0-9A-Fa-f]{8,})", source.strip())
        model_hash = match.group(2) if match else None
    used = {"prompt", "uc", "seed", "steps", "scale", "sampler", "width", "height"}
    extra = _rest(comment, used)
    for key in ("Software", "Generation time", "Title"):
        if isinstance(info.get(key), str):
            extra[key] = info[key]
    return {
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": comment.get("seed"),
        "steps": comment.get("steps"),
        "cfg": comment.get("scale"),
        "sampler": comment.get("sampler"),
        "scheduler": comment.get("noise_schedule"),
        "width": comment.get("width"),
        "height": comment.get("height"),
        "model": source,  # "Stable Diffusion 1D44365E": NovelAI's model and its hash
        "model_hash": model_hash,
        "generator": "NovelAI",
        "extra": extra,
    }


# --- SwarmUI -------------------------------------------------------------------------------------


def from_swarmui(data: dict) -> dict:
    """SwarmUI: {"sui_image_params": {prompt, negativeprompt, model, seed, steps, cfgscale, width,
    height, sampler, scheduler, swarm_version, ...}, "sui_extra_data": {...}, "sui_models": [{name,
    param, hash}]} (docs/Image Metadata Format.md); values may be numbers or numeric text."""
    params = data.get("sui_image_params") if isinstance(data.get("sui_image_params"), dict) else {}
    model_hash = None
    models = data.get("sui_models")
    if isinstance(models, list):
        for item in models:
            if isinstance(item, dict) and item.get("param") == "model" and isinstance(item.get("hash"), str):
                model_hash = item["hash"]
                break
    used = {"prompt", "negativeprompt", "seed", "steps", "cfgscale", "width", "height", "sampler", "model"}
    extra = _rest(params, used)
    if isinstance(data.get("sui_extra_data"), dict):
        extra.update({k: v for k, v in data["sui_extra_data"].items() if k not in extra})
    if isinstance(models, list):
        extra["sui_models"] = models
    return {
        "prompt": params.get("prompt"),
        "negative_prompt": params.get("negativeprompt"),
        "seed": params.get("seed"),
        "steps": params.get("steps"),
        "cfg": params.get("cfgscale"),
        "sampler": params.get("sampler"),
        "scheduler": params.get("scheduler"),
        "width": params.get("width"),
        "height": params.get("height"),
        "model": params.get("model"),
        "model_hash": model_hash,
        "generator": "SwarmUI",
        "extra": extra,
    }


# --- Easy Diffusion ------------------------------------------------------------------------------

# Easy Diffusion writes its request either with its own keys (json/embed) or with the UI's labels
# (txt): easydiffusion's save_utils TASK_TEXT_MAPPING
_EASY_LABELS = {
    "prompt": "Prompt", "negative_prompt": "Negative Prompt", "seed": "Seed",
    "use_stable_diffusion_model": "Stable Diffusion model", "clip_skip": "Clip Skip", "use_vae_model": "VAE model",
    "sampler_name": "Sampler", "width": "Width", "height": "Height", "num_inference_steps": "Steps",
    "guidance_scale": "Guidance Scale",
}
EASY_MARKERS = ("use_stable_diffusion_model", "Stable Diffusion model", "num_inference_steps")


def is_easy_diffusion(data: dict) -> bool:
    return any(key in data for key in ("use_stable_diffusion_model", "Stable Diffusion model")) or (
        "num_inference_steps" in data and "guidance_scale" in data and ("sampler_name" in data or "use_vae_model" in data)
    )


def from_easy_diffusion(data: dict) -> dict:
    """Easy Diffusion (sdkit save_dicts): one PNG text chunk per key, or the same dict as JSON in
    the EXIF UserComment of JPEG/WebP."""

    def get(key):
        value = data.get(key)
        return value if value is not None else data.get(_EASY_LABELS[key])

    used = set(_EASY_LABELS) | set(_EASY_LABELS.values())
    return {
        "prompt": get("prompt"),
        "negative_prompt": get("negative_prompt"),
        "seed": get("seed"),
        "steps": get("num_inference_steps"),
        "cfg": get("guidance_scale"),
        "sampler": get("sampler_name"),
        "width": get("width"),
        "height": get("height"),
        "model": _basename(get("use_stable_diffusion_model")),
        "generator": "Easy Diffusion",
        "extra": {**_rest(data, used), **({"use_stable_diffusion_model": get("use_stable_diffusion_model")} if get("use_stable_diffusion_model") else {}),
                  **({"clip_skip": get("clip_skip")} if get("clip_skip") is not None else {}),
                  **({"use_vae_model": get("use_vae_model")} if get("use_vae_model") else {})},
    }


# --- Draw Things ---------------------------------------------------------------------------------


def from_draw_things(data: dict) -> dict:
    """Draw Things: XMP exif:UserComment JSON {"c", "uc", "model", "sampler", "scale", "seed",
    "steps", "strength", "size": "WxH", "seed_mode", "shift", "v2": {...}}."""
    width, height = _pair(data.get("size"))
    used = {"c", "uc", "model", "sampler", "scale", "seed", "steps", "size"}
    return {
        "prompt": data.get("c"),
        "negative_prompt": data.get("uc"),
        "seed": data.get("seed"),
        "steps": data.get("steps"),
        "cfg": data.get("scale"),
        "sampler": data.get("sampler"),
        "width": width,
        "height": height,
        "model": data.get("model"),
        "generator": "Draw Things",
        "extra": _rest(data, used),
    }


def from_draw_things_description(text: str) -> dict:
    """Draw Things' dc:description when its JSON is missing: "PROMPT\\n-NEGATIVE\\nSteps: ...,
    Guidance Scale: ..., Size: WxH, Model: ..."."""
    from spellbook.ingest.readers.image_a1111 import from_a1111

    lines = text.replace("\r\n", "\n").split("\n")
    if len(lines) >= 2 and lines[1].startswith("-"):
        lines[1] = "Negative prompt: " + lines[1][1:]
    fields = from_a1111("\n".join(lines), "XMP")
    fields["generator"] = "Draw Things"
    return fields


# --- Hugging Face Spaces, Stability Matrix, Civitai, TensorArt -----------------------------------


def is_hf_space(data: dict) -> bool:
    return "Model" in data and ("resolution" in data or "num_inference_steps" in data) and "prompt" in data


def from_hf_space(data: dict) -> dict:
    """Gradio + diffusers Spaces (the animagine-xl family): {"prompt", "negative_prompt",
    "resolution": "832 x 1216", "guidance_scale", "num_inference_steps", "seed", "sampler",
    "Model", "Model hash", "use_upscaler", ...}."""
    width, height = _pair(data.get("resolution"))
    used = {"prompt", "negative_prompt", "resolution", "guidance_scale", "num_inference_steps", "seed", "sampler", "Model", "Model hash"}
    return {
        "prompt": data.get("prompt"),
        "negative_prompt": data.get("negative_prompt"),
        "seed": data.get("seed"),
        "steps": data.get("num_inference_steps"),
        "cfg": data.get("guidance_scale"),
        "sampler": data.get("sampler"),
        "width": width,
        "height": height,
        "model": data.get("Model"),
        "model_hash": data.get("Model hash"),
        "generator": "Hugging Face Space",
        "extra": _rest(data, used),
    }


def from_stability_matrix(data: dict) -> dict:
    """Stability Matrix `parameters-json`: {PositivePrompt, NegativePrompt, Width, Height, Seed,
    Steps, CfgScale, Sampler, ModelName, ModelHash, ...}."""
    used = {"PositivePrompt", "NegativePrompt", "Width", "Height", "Seed", "Steps", "CfgScale", "Sampler", "ModelName", "ModelHash"}
    return {
        "prompt": data.get("PositivePrompt"),
        "negative_prompt": data.get("NegativePrompt"),
        "seed": data.get("Seed"),
        "steps": data.get("Steps"),
        "cfg": data.get("CfgScale"),
        "sampler": data.get("Sampler"),
        "scheduler": data.get("Scheduler"),
        "width": data.get("Width"),
        "height": data.get("Height"),
        "model": data.get("ModelName"),
        "model_hash": data.get("ModelHash"),
        "generator": "Stability Matrix",
        "extra": _rest(data, used),
    }


def from_civitai_extra(extra_metadata: dict) -> dict:
    """Civitai's orchestrator: `extraMetadata` JSON {prompt, negativePrompt, steps, cfgScale,
    sampler, seed, width, height, clipSkip, baseModel, workflowId, resources, ...} beside the graph."""
    used = {"prompt", "negativePrompt", "steps", "cfgScale", "sampler", "seed", "width", "height"}
    return {
        "prompt": extra_metadata.get("prompt"),
        "negative_prompt": extra_metadata.get("negativePrompt"),
        "seed": extra_metadata.get("seed"),
        "steps": extra_metadata.get("steps"),
        "cfg": extra_metadata.get("cfgScale"),
        "sampler": extra_metadata.get("sampler"),
        "width": extra_metadata.get("width"),
        "height": extra_metadata.get("height"),
        "generator": "Civitai",
        "extra": _rest(extra_metadata, used),
    }


def from_tensorart(data: dict) -> tuple[dict, dict]:
    """TensorArt `generation_data`: (fields that win over the graph, fields that only fill gaps).
    prompt, negativePrompt and baseModel {modelFileName, hash} are what TensorArt's site shows; the
    graph beside it (with TensorArt's own ECHOCheckpointLoaderSimple) gives the sampling settings."""
    base = data.get("baseModel") if isinstance(data.get("baseModel"), dict) else {}
    overrides = {
        "prompt": data.get("prompt"),
        "negative_prompt": data.get("negativePrompt"),
        "model": base.get("modelFileName") or base.get("modelName"),
        "model_hash": base.get("hash"),
    }
    fills = {}
    for field_name, keys in (("seed", ("seed",)), ("steps", ("steps",)), ("cfg", ("cfgScale",)),
                             ("sampler", ("samplerName", "sampler")), ("width", ("width",)), ("height", ("height",))):
        value = _pick(data, *keys)
        if value is not None:
            fills[field_name] = value
    used = {"prompt", "negativePrompt", "baseModel", "seed", "steps", "cfgScale", "samplerName", "sampler", "width", "height"}
    fills["extra"] = _rest(data, used)
    return {key: value for key, value in overrides.items() if value is not None}, fills
