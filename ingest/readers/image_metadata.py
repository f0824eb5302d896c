"""Generated images that carry their own generation settings, one row per image file.

Understood (docs/image_metadata.md says which field comes from where, per tool):
- AUTOMATIC1111 and its forks (Forge, reForge, SD.Next), Fooocus' A1111 scheme, Civitai and the
  ComfyUI saver nodes: A1111 infotext in the PNG `parameters` chunk, the JPEG/WebP EXIF
  UserComment (or another EXIF text tag), or hidden "stealth" in the low bits of alpha or RGB;
- ComfyUI: the API `prompt` graph (PNG text before or after the image data, the `comf` chunks of
  animated PNGs, `prompt:`-prefixed EXIF tags of its WebP saver, `{"prompt": ..., "workflow": ...}`
  JSON in the UserComment of the JPEG/WebP saver nodes), else the editor's `workflow`;
- SwarmUI (`sui_image_params`), Fooocus and RuinedFooocus JSON, InvokeAI (`invokeai_metadata`,
  2.x `sd-metadata`, 1.x `Dream`), NovelAI (V1-V4.5 `Comment` JSON, in PNG text, WebP EXIF or
  alpha stealth), Civitai (`extraMetadata` beside its graph), TensorArt (`generation_data`), Easy
  Diffusion (one PNG chunk per setting, or JSON in UserComment), Draw Things (XMP), Stability
  Matrix (`parameters-json`) and the Gradio Spaces of Hugging Face (JSON `parameters`).

Width and height come from the metadata only, never from the pixels: an upscaled or cropped file
says nothing about the size the model generated at. The container is read without Pillow
(spellbook.ingest.readers.image_containers, every read bounded); Pillow only decodes pixels for
the stealth check and opens formats other than PNG, JPEG and WebP.
"""
from __future__ import annotations

import json
import math
import re
import zlib

from PIL import Image, UnidentifiedImageError

from spellbook.ingest.readers.common import (
    INT64_MAX,
    RowRejected,
    check_prompt,
    optional_text,
    parse_float,
    parse_int,
)
from spellbook.ingest.readers.image_a1111 import from_a1111, parse_a1111_parameters, settings_pairs
from spellbook.ingest.readers.image_comfyui import from_graph, looks_like_api_graph, workflow_to_graph
from spellbook.ingest.readers.image_containers import (
    Container,
    NotAnImage,
    TooLarge,
    decode_user_comment,
    inflate,
    read_container,
    read_exif,
    read_xmp,
    sniff,
)
from spellbook.ingest.readers.image_tools import (
    from_civitai_extra,
    from_draw_things,
    from_draw_things_description,
    from_dream,
    from_easy_diffusion,
    from_fooocus,
    from_hf_space,
    from_invokeai,
    from_novelai,
    from_ruined_fooocus,
    from_sd_metadata,
    from_stability_matrix,
    from_swarmui,
    from_tensorart,
    is_easy_diffusion,
    is_hf_space,
    parse_json,
    parse_json_object,
)
from spellbook.text.samplers import A1111_NAMES, canonical_sampler

__all__ = ["read_image_metadata", "parse_a1111_parameters", "decode_user_comment"]

MAX_EXTRA_VALUE = 10_000  # characters of JSON per extra value; longer values are dropped
MAX_EXTRA_TOTAL = 100_000
STEALTH_MAX_PIXELS = 50_000_000
STEALTH_MAX_TEXT = 2 * 2**20
_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "scheduler", "width", "height", "model", "model_hash")


# --- one file ------------------------------------------------------------------------------------


def read_image_metadata(path) -> dict:
    """The generation settings stored in one image file: prompt, negative_prompt, seed, steps, cfg,
    sampler (canonical), sampler_original, width, height, model, model_hash, generator (the tool
    that wrote the file, or None) and extra (every other setting it recorded, by the tool's names).

    Raises RowRejected (with the column = the metadata chunk) when the file is no image, carries no
    recognised metadata, or holds values that fail the usual checks.
    """
    container = _container(path)
    raw, column = _generation(container, path)
    return _finish(raw, column)


def _container(path) -> Container:
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            kind = sniff(head)
            if kind is not None:
                handle.seek(0)
                try:
                    return read_container(handle, kind)
                except NotAnImage as problem:
                    raise RowRejected(None, f"not a readable image: {problem}") from None
    except OSError as problem:
        raise RowRejected(None, f"cannot read file: {problem}") from None
    return _pillow_container(path)


def _pillow_container(path) -> Container:
    """Formats we do not walk ourselves (TIFF, GIF, AVIF...): Pillow's text info, EXIF and XMP."""
    try:
        with Image.open(path) as image:
            container = Container(image.format or "image")
            info = dict(image.info)
            try:
                exif = image.getexif()
                exif.get_ifd(0x8769)
                exif_bytes = info.get("exif") if isinstance(info.get("exif"), bytes) else (exif.tobytes() if len(exif) else None)
            except Exception:  # Pillow raises many kinds on damaged EXIF; a damaged EXIF just has no comment
                exif_bytes = None
    except UnidentifiedImageError:
        raise RowRejected(None, "not an image Pillow can read") from None
    except Image.DecompressionBombError as problem:
        raise RowRejected(None, f"image too large to open safely: {problem}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as problem:
        raise RowRejected(None, f"cannot read image: {problem}") from None
    for key, value in info.items():
        if isinstance(value, str) and key not in ("exif", "xmp"):
            container.add(key, value, f"{container.format} text")
        elif key == "comment" and isinstance(value, bytes):
            container.add("comment", value.decode("utf-8", "replace").rstrip("\0"), f"{container.format} comment")
    if exif_bytes:
        read_exif(exif_bytes, container, "EXIF")
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", "replace")
    if isinstance(xmp, str):
        read_xmp(xmp, container, "XMP")
    return container


# --- which format ---------------------------------------------------------------------------------


def _generation(container: Container, path) -> tuple[dict, str]:
    """(raw generation fields, the metadata chunk they came from), or a rejection."""
    get = container.get
    software = get("Software") or ""

    # NovelAI: Description + Software + Source + Comment JSON in PNG text
    comment = get("Comment")
    if comment is not None and (software.startswith("NovelAI") or get("Description") is not None) and comment.lstrip().startswith("{"):
        return from_novelai(_text_dict(container)), "Comment"

    if get("invokeai_metadata") is not None:
        return from_invokeai(parse_json_object(get("invokeai_metadata"), "invokeai_metadata")), "invokeai_metadata"
    if get("sd-metadata") is not None:
        return from_sd_metadata(parse_json_object(get("sd-metadata"), "sd-metadata")), "sd-metadata"
    if get("Dream") is not None:
        return from_dream(get("Dream")), "Dream"

    if get("generation_data") is not None:
        return _tensorart(container), "generation_data"
    if get("parameters-json") is not None:
        return from_stability_matrix(parse_json_object(get("parameters-json"), "parameters-json")), "parameters-json"

    png_text = {entry.key: entry.text for entry in container.entries if entry.source.startswith("PNG")}
    if is_easy_diffusion(png_text):
        return from_easy_diffusion(png_text), "Easy Diffusion text chunks"

    parameters = container.entry("parameters")
    if parameters is not None:
        column = "parameters"
        if parameters.text.lstrip().startswith("{"):
            return _json_document(parse_json_object(parameters.text, column), column, container), column
        fields = from_a1111(parameters.text, column)
        return _refine_a1111(fields, container), column

    prompt = container.entry("prompt")
    if prompt is not None:
        column = "prompt"
        data = parse_json(prompt.text, column)
        if isinstance(data, dict) and not looks_like_api_graph(data):
            return _json_document(data, column, container), column
        if not isinstance(data, dict):
            raise RowRejected(column, "ComfyUI prompt is not a JSON object of nodes")
        return _comfy(data, column, container), column

    user_comment = get("UserComment")
    if user_comment is not None and user_comment.strip():
        column = "UserComment"
        if user_comment.lstrip().startswith("{"):
            return _json_document(parse_json_object(user_comment, column), column, container), column
        parsed = parse_a1111_parameters(user_comment[:1_000_000])
        if parsed["settings"] or parsed["negative_prompt"] is not None:
            return _refine_a1111(from_a1111(user_comment, column), container), column
        # a camera's or an editor's comment, not infotext: look further
        container.problems.append("the EXIF UserComment is plain text, not generation settings")

    xmp_comment = get("xmp_UserComment")
    if (get("CreatorTool") or "").startswith("Draw Things"):
        if xmp_comment and xmp_comment.lstrip().startswith("{"):
            return from_draw_things(parse_json_object(xmp_comment, "XMP")), "XMP"
        if get("xmp_description"):
            return from_draw_things_description(get("xmp_description")), "XMP"
    if xmp_comment and xmp_comment.lstrip().startswith("{"):
        return _json_document(parse_json_object(xmp_comment, "XMP"), "XMP", container), "XMP"

    workflow = get("workflow")
    if workflow is not None and workflow.strip():
        return _from_workflow(workflow, "workflow"), "workflow"

    for key in ("ImageDescription", "XPComment", "jpeg_comment", "comment", "xmp_description", "xmp_ImageDescription",
                "xmp_UserComment", "Description", "Model", "Make"):
        text = get(key)
        if text and _looks_like_infotext(text):
            if text.lstrip().startswith("{"):
                return _json_document(parse_json_object(text, key), key, container), key
            return _refine_a1111(from_a1111(text, key), container), key

    stealth = _stealth_text(path, container)
    if stealth is not None:
        return _from_stealth(stealth, container), "stealth"

    found = ", ".join(list(dict.fromkeys(f"{entry.source} {entry.key!r}" for entry in container.entries))[:12]) or "none"
    problems = f"; {'; '.join(container.problems[:3])}" if container.problems else ""
    raise RowRejected(
        None,
        "no generation metadata found (looked for A1111 parameters, ComfyUI prompt/workflow, SwarmUI, "
        "Fooocus, InvokeAI, NovelAI, Civitai, TensorArt, Easy Diffusion and Draw Things metadata in "
        f"PNG text, EXIF and XMP, and for stealth info; found: {found}){problems}",
    )


def _looks_like_infotext(text: str) -> bool:
    text = text.strip()
    if text.startswith("{"):
        return any(marker in text for marker in ('"sui_image_params"', '"prompt"', '"class_type"', '"Comment"', '"c"'))
    last = text.rsplit("\n", 1)[-1]
    return len(settings_pairs(last[:100_000])) >= 3 and ("Steps" in last or "Seed" in last or "Sampler" in last)


def _text_dict(container: Container) -> dict:
    out: dict = {}
    for entry in container.entries:
        out.setdefault(entry.key, entry.text)
    return out


def _merge(primary: dict, secondary: dict) -> dict:
    """primary's fields, with secondary's where primary has none; extras merged, primary winning."""
    merged = dict(primary)
    for key in _FIELDS + ("generator",):
        if merged.get(key) is None and secondary.get(key) is not None:
            merged[key] = secondary[key]
    merged["extra"] = {**(secondary.get("extra") or {}), **(primary.get("extra") or {})}
    return merged


def _refine_a1111(fields: dict, container: Container) -> dict:
    """What the rest of the file says about A1111 infotext: a ComfyUI graph beside it (saver nodes:
    the graph is read, the text fills its gaps), Fooocus' scheme and raw prompts, the EXIF Software."""
    get = container.get
    extra = fields.get("extra") or {}
    software = get("Software") or ""
    scheme = (get("fooocus_scheme") or get("MakerNote") or "").strip().lower()
    if fields.get("generator") == "Fooocus" or software.startswith("Fooocus") or scheme == "a1111":
        if isinstance(extra.get("Raw prompt"), str):
            fields["prompt"] = extra.pop("Raw prompt")
        if isinstance(extra.get("Raw negative prompt"), str):
            fields["negative_prompt"] = extra.pop("Raw negative prompt")
        if software.startswith("Fooocus") or scheme == "a1111":
            fields["generator"] = "Fooocus"
    graph_text = get("prompt")
    if graph_text and graph_text.lstrip().startswith("{"):
        try:
            data = json.loads(graph_text)
            if looks_like_api_graph(data):
                graph = from_graph(data, "prompt", _workflow(container))
                if graph.get("prompt") is not None:
                    return _merge(graph, fields)
                fields["generator"] = "ComfyUI"
        except (RowRejected, ValueError, RecursionError):
            pass  # the infotext stands on its own
    return fields


def _workflow(container: Container):
    """The editor's workflow beside a graph, parsed, or None (it only backs up run-time text)."""
    text = container.get("workflow")
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _comfy(data: dict, column: str, container: Container, workflow=None) -> dict:
    """An API graph, with Civitai's extraMetadata filling what the graph lacks."""
    extra_metadata = data.get("extraMetadata")
    if extra_metadata is None:
        extra_metadata = container.get("extraMetadata")
    civitai = None
    if isinstance(extra_metadata, str):
        try:
            extra_metadata = json.loads(extra_metadata)
        except (ValueError, RecursionError):
            extra_metadata = None
    if isinstance(extra_metadata, dict):
        civitai = from_civitai_extra(extra_metadata)
    try:
        fields = from_graph(data, column, workflow if workflow is not None else _workflow(container))
    except RowRejected:
        if civitai is None:
            raise
        return civitai  # an upscale-only graph: the settings are all in extraMetadata
    if civitai is not None:
        fields = _merge(fields, civitai)
        fields["generator"] = "Civitai"
    return fields


def _from_workflow(text: str, column: str) -> dict:
    data = parse_json(text, column)
    if looks_like_api_graph(data):
        return from_graph(data, column)
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise RowRejected(column, "ComfyUI workflow is not a JSON object with nodes")
    graph = workflow_to_graph(data)
    fields = from_graph(graph, column)
    fields["extra"]["read_from"] = "workflow"
    return fields


def _tensorart(container: Container) -> dict:
    overrides, fills = from_tensorart(parse_json_object(container.get("generation_data"), "generation_data"))
    fields: dict = {"extra": {}}
    graph_text = container.get("prompt")
    if graph_text:
        try:
            data = json.loads(graph_text)
            if looks_like_api_graph(data):
                fields = from_graph(data, "prompt", _workflow(container))
        except (RowRejected, ValueError, RecursionError):
            pass
    fields.update(overrides)
    fields = _merge(fields, fills)
    fields["generator"] = "TensorArt"
    return fields


def _json_document(data: dict, column: str, container: Container) -> dict:
    """A JSON object found in parameters, UserComment or XMP: which tool's is it?"""
    software = str(data.get("software") or data.get("Software") or "")
    if isinstance(data.get("sui_image_params"), dict):
        return from_swarmui(data)
    if software.startswith("RuinedFooocus") or ("Prompt" in data and "base_model_name" in data):
        return from_ruined_fooocus(data)
    if "Comment" in data and (software.startswith("NovelAI") or "Description" in data or "Source" in data):
        return from_novelai(data, column)
    if "uc" in data and "scale" in data and ("v4_prompt" in data or "noise_schedule" in data or "sampler" in data) and "c" not in data:
        return from_novelai({"Comment": data}, column)
    if is_easy_diffusion(data):
        return from_easy_diffusion(data)
    wrapped = data.get("prompt")
    if isinstance(wrapped, str) and wrapped.lstrip().startswith("{") and ("workflow" in data or "class_type" in wrapped):
        try:
            wrapped = json.loads(wrapped)
        except (ValueError, RecursionError):
            wrapped = None
    if looks_like_api_graph(wrapped):  # {"prompt": {...}, "workflow": {...}}: ComfyUI's JPEG/WebP savers
        workflow = data.get("workflow")
        return _comfy(wrapped, column, container, workflow if isinstance(workflow, dict) else None)
    if looks_like_api_graph(data):  # the graph itself (Civitai adds extra / extraMetadata keys to it)
        return _comfy(data, column, container)
    if isinstance(data.get("extraMetadata"), (str, dict)):
        return _civitai_only(data)
    if "base_model" in data or "full_prompt" in data or str(data.get("version", "")).startswith("Fooocus"):
        return from_fooocus(data)
    if is_hf_space(data):
        return from_hf_space(data)
    if "c" in data and ("uc" in data or "scale" in data):
        return from_draw_things(data)
    if "PositivePrompt" in data:
        return from_stability_matrix(data)
    if "positive_prompt" in data:
        return from_invokeai(data)
    if isinstance(data.get("workflow"), (dict, str)):
        workflow = data["workflow"]
        return _from_workflow(workflow if isinstance(workflow, str) else json.dumps(workflow), column)
    if isinstance(data.get("nodes"), list):
        return _from_workflow(json.dumps(data), column)
    generic = _generic_json(data)
    if generic is not None:
        return generic
    keys = ", ".join(list(data)[:8])
    raise RowRejected(column, f"{column} holds JSON this reader does not know (keys: {keys})")


_GENERIC = {
    "prompt": ("prompt", "positive_prompt", "positive", "Prompt", "positivePrompt"),
    "negative_prompt": ("negative_prompt", "negativePrompt", "negative", "Negative prompt", "uc"),
    "seed": ("seed", "Seed", "noise_seed"),
    "steps": ("steps", "Steps", "num_inference_steps", "sampling_steps"),
    "cfg": ("cfg", "cfg_scale", "cfgScale", "guidance_scale", "CFG scale", "scale"),
    "sampler": ("sampler", "sampler_name", "Sampler", "samplerName"),
    "scheduler": ("scheduler", "Schedule type"),
    "width": ("width", "Width"),
    "height": ("height", "Height"),
    "model": ("model", "model_name", "Model", "checkpoint", "sd_model_name", "modelName"),
    "model_hash": ("model_hash", "Model hash", "sd_model_hash"),
}


def _generic_json(data: dict) -> dict | None:
    """JSON from a tool this reader has no schema for, read by the key names most tools share;
    None unless it holds a prompt text."""
    fields: dict = {}
    used = set()
    for field_name, keys in _GENERIC.items():
        for key in keys:
            value = data.get(key)
            if value is not None and not isinstance(value, (dict, list)):
                fields[field_name] = value
                used.add(key)
                break
    if not isinstance(fields.get("prompt"), str):
        return None
    if fields.get("width") is None:
        for key in ("size", "Size", "resolution"):
            match = re.search(r"(\d+)\s*[x×*,]\s*(\d+)", str(data.get(key) or ""))
            if match:
                fields["width"], fields["height"] = match.groups()
                used.add(key)
                break
    fields["extra"] = {key: value for key, value in data.items() if key not in used}
    fields["generator"] = None
    return fields


def _civitai_only(data: dict) -> dict:
    extra_metadata = data["extraMetadata"]
    if isinstance(extra_metadata, str):
        extra_metadata = parse_json_object(extra_metadata, "extraMetadata")
    return from_civitai_extra(extra_metadata)


# --- stealth -------------------------------------------------------------------------------------

_STEALTH = {"stealth_pnginfo": False, "stealth_pngcomp": True, "stealth_rgbinfo": False, "stealth_rgbcomp": True}
_LSB_AS_DIGIT = bytes(b"01"[value & 1] for value in range(256))
_SIGNATURE_BITS = 15 * 8
_HEADER_BITS = _SIGNATURE_BITS + 32


def _column_bits(image: Image.Image, per_pixel: int, bits: int) -> bytes:
    """The low bits of the first columns (top to bottom, left to right) as b"0110...", enough for `bits`."""
    columns = min(image.width, math.ceil(bits / (image.height * per_pixel)))
    strip = image.crop((0, 0, columns, image.height)).transpose(Image.Transpose.TRANSPOSE)
    return strip.tobytes().translate(_LSB_AS_DIGIT)


def _lsb_payload(image: Image.Image, per_pixel: int) -> str | None:
    """A1111 stealth info: column by column, the lowest bit of each value spells a 15-byte
    signature, a 32-bit payload length in bits, then the (optionally gzipped) UTF-8 text."""
    capacity = image.width * image.height * per_pixel
    if capacity < _HEADER_BITS:
        return None
    bits = _column_bits(image, per_pixel, _HEADER_BITS)
    signature = int(bits[:_SIGNATURE_BITS], 2).to_bytes(15, "big").decode("latin-1")
    if signature not in _STEALTH:
        return None
    length = int(bits[_SIGNATURE_BITS:_HEADER_BITS], 2)
    if length == 0 or length % 8 or _HEADER_BITS + length > capacity:
        raise RowRejected("stealth", f"{signature} data is cut short or has a bad length ({length} bits)")
    bits = _column_bits(image, per_pixel, _HEADER_BITS + length)[_HEADER_BITS : _HEADER_BITS + length]
    payload = int(bits, 2).to_bytes(length // 8, "big")
    try:
        if _STEALTH[signature]:
            payload = inflate(payload, STEALTH_MAX_TEXT, wbits=31)
        return payload.decode("utf-8")
    except TooLarge as problem:
        raise RowRejected("stealth", f"{signature} data {problem}; refusing to read it") from None
    except (zlib.error, UnicodeDecodeError) as problem:
        raise RowRejected("stealth", f"{signature} data cannot be decoded: {problem}") from None


def _stealth_text(path, container: Container) -> str | None:
    """The text hidden in the pixels (alpha channel first, then RGB), or None. Only lossless files
    can hold it: PNG, and WebP (lossless ones; lossy ones just show no signature)."""
    if container.format not in ("PNG", "WEBP"):
        return None
    try:
        with Image.open(path) as image:
            if image.width * image.height > STEALTH_MAX_PIXELS:
                container.problems.append(f"stealth info not looked for: more than {STEALTH_MAX_PIXELS:,} pixels")
                return None
            if image.mode not in ("RGB", "RGBA", "LA"):
                return None
            image.load()
            if image.mode in ("RGBA", "LA"):
                text = _lsb_payload(image.getchannel("A"), 1)
                if text is not None:
                    return text
            if image.mode in ("RGB", "RGBA"):
                return _lsb_payload(image.convert("RGB"), 3)
    except RowRejected:
        raise
    except Image.DecompressionBombError as problem:
        container.problems.append(f"stealth info not looked for: {problem}")
    except (OSError, ValueError, SyntaxError, EOFError, UnidentifiedImageError) as problem:
        container.problems.append(f"image data is damaged or unreadable: {problem}")
    return None


def _from_stealth(text: str, container: Container) -> dict:
    """Stealth text is A1111 infotext, or (NovelAI) the JSON of its PNG text chunks."""
    if text.lstrip().startswith("{"):
        data = parse_json_object(text, "stealth")
        return _json_document(data, "stealth", container)
    return from_a1111(text, "stealth")


# --- checks and shape ----------------------------------------------------------------------------

_SCHEDULE_SUFFIX = re.compile(
    r"[\s_](karras|exponential|automatic|sgm[\s_]uniform|ddim[\s_]uniform|uniform|simple|normal|beta|"
    r"align[\s_]your[\s_]steps|ays|trailing|substep|kl[\s_]optimal|linear[\s_]quadratic|polyexponential|gpu)$",
    re.IGNORECASE,
)


def _canonical(name: str) -> str | None:
    canonical = canonical_sampler(name)
    if canonical is None and name.lower().endswith("_a"):
        canonical = canonical_sampler(name[:-2] + "_ancestral")  # legacy InvokeAI: "k_euler_a", "k_dpm_2_a"
    return canonical


def _sampler(value, scheduler) -> str | None:
    """Canonical sampler, folding in a separate Karras scheduler ("dpmpp_2m" + "karras") and
    schedule words written into the name ("euler_karras", "DPM++ 2M AYS", "UniPC Trailing")."""
    if value is None:
        return None
    name = str(value).strip()
    karras = isinstance(scheduler, str) and "karras" in scheduler.lower()
    if name.lower().startswith("sample_"):
        name = name[len("sample_") :]  # ComfyUI before mid-2023 named samplers after k-diffusion functions
    if name.lower().endswith("_k"):
        name, karras = name[:-2], True  # InvokeAI spells Karras variants "dpmpp_2m_k"
    canonical = _canonical(name)
    for _ in range(4):
        if canonical is not None:
            break
        match = _SCHEDULE_SUFFIX.search(name)
        if match is None:
            break
        karras = karras or match.group(1).lower() == "karras"
        name = name[: match.start()]
        canonical = _canonical(name)
    if canonical and karras and f"{canonical}_karras" in A1111_NAMES:
        return f"{canonical}_karras"
    return canonical


def _jsonable(value, depth: int = 0):
    """A value as JSON-ready Python: text with lone surrogates repaired, non-finite floats as None."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 16:
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, depth + 1) for item in value[:1000]]
    if isinstance(value, dict):
        return {_jsonable(str(key)): _jsonable(item, depth + 1) for key, item in list(value.items())[:1000]}
    return _jsonable(str(value), depth)


def _clean_extra(extra) -> dict:
    """extra as a JSON-serialisable dict: values over MAX_EXTRA_VALUE characters of JSON dropped."""
    out: dict = {}
    total = 0
    for key, value in (extra or {}).items() if isinstance(extra, dict) else ():
        if value is None or key in ("",):
            continue
        value = _jsonable(value)
        if value is None:
            continue
        try:
            size = len(json.dumps(value, ensure_ascii=False))
        except (TypeError, ValueError, RecursionError):
            continue
        if size > MAX_EXTRA_VALUE or total + size > MAX_EXTRA_TOTAL:
            continue
        total += size
        out[_jsonable(str(key))] = value
    return out


def _finish(raw: dict, column: str) -> dict:
    def checked(parse, key, **options):
        try:
            return parse(raw.get(key), key, **options)
        except RowRejected as problem:
            raise RowRejected(column, f"{column}: {problem.reason}") from None

    prompt = raw.get("prompt")
    if isinstance(prompt, str) and not prompt.strip():
        prompt = ""  # the tool recorded an empty positive prompt (A1111 with only a negative, say)
    else:
        try:
            check_prompt(prompt)
        except RowRejected as problem:
            raise RowRejected(column, f"{column}: {problem.reason}") from None
    sampler_original = optional_text(raw.get("sampler"))
    extra = dict(raw.get("extra") or {})
    if raw.get("scheduler") is not None and "scheduler" not in extra and "Schedule type" not in extra and "Scheduler" not in extra:
        extra["scheduler"] = raw["scheduler"]
    model_hash = raw.get("model_hash")
    return {
        "prompt": prompt,
        "negative_prompt": optional_text(raw.get("negative_prompt")),
        # ComfyUI and Fooocus draw 64-bit seeds; anything that fits the column is real
        "seed": checked(parse_int, "seed", maximum=INT64_MAX),
        "steps": checked(parse_int, "steps"),
        "cfg": checked(parse_float, "cfg"),
        "sampler": _sampler(sampler_original, raw.get("scheduler")),
        "sampler_original": sampler_original,
        "width": checked(parse_int, "width"),
        "height": checked(parse_int, "height"),
        "model": optional_text(raw.get("model")),
        "model_hash": optional_text(model_hash) if isinstance(model_hash, (str, int)) and not isinstance(model_hash, bool) else None,
        "generator": optional_text(raw.get("generator")),
        "extra": _clean_extra(extra),
    }
