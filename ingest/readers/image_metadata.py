"""Generated images that carry their own generation settings, one row per image file.

Understood: AUTOMATIC1111 (`parameters` PNG text, JPEG/WebP EXIF UserComment, and the "stealth"
copy hidden in the low bits of the alpha or RGB channels), ComfyUI (`prompt` API graph), InvokeAI
(`invokeai_metadata`, legacy `sd-metadata` and `Dream`), Fooocus (`parameters` JSON, or A1111-style
text), NovelAI (`Description` + `Comment` JSON).

Width and height come from the metadata only, never from the pixels: an upscaled or cropped file
says nothing about the size the model generated at.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import deque

from PIL import ExifTags, Image, UnidentifiedImageError

from spellbook.ingest.readers.common import (
    INT64_MAX,
    RowRejected,
    check_prompt,
    optional_text,
    parse_float,
    parse_int,
)
from spellbook.text.samplers import A1111_NAMES, canonical_sampler

# --- A1111 infotext ------------------------------------------------------------------------------

# One "Key: value" pair of the settings line, matched where the previous one ended; a value may be
# "quoted, with commas" (a JSON string).
_A1111_PAIR = re.compile(r'\s*(\w[\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)\s*(?:,|$)')
_NEGATIVE = "Negative prompt:"


def _settings(line: str) -> dict[str, str]:
    """Key/value pairs, matched pair by pair (a segment without "Key:" is skipped up to its comma).
    Walking forward like this keeps a megabyte-long prompt line linear: re.findall would retry at
    every character and take quadratic time."""
    settings, position = {}, 0
    while position < len(line):
        match = _A1111_PAIR.match(line, position)
        if match is None:
            comma = line.find(",", position)
            if comma < 0:
                break
            position = comma + 1
            continue
        key, value = match.groups()
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value[1:-1]
        settings[key.strip()] = str(value).strip()
        position = match.end()
    return settings


def parse_a1111_parameters(text: str) -> dict:
    """Split AUTOMATIC1111 infotext into {"prompt", "negative_prompt", "settings"}.

        PROMPT (may span lines)
        Negative prompt: NEG (may span lines)
        Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Model: name, ...

    settings maps each key to its value as text ("Steps" -> "20"), quotes removed. The last line is
    the settings line only if it holds at least three "Key: value" pairs (A1111's own rule), so a
    prompt that happens to contain a colon is not mistaken for settings. negative_prompt is None
    when there is none.
    """
    lines = text.split("\n")
    while len(lines) > 1 and not lines[-1].strip():  # trailing newlines after the settings line
        lines.pop()
    settings = _settings(lines[-1])
    if len(settings) >= 3:
        lines = lines[:-1]
    else:
        settings = {}
    prompt_lines, negative_lines = lines, None
    for index, line in enumerate(lines):
        if line.startswith(_NEGATIVE):
            prompt_lines = lines[:index]
            negative_lines = [line[len(_NEGATIVE) :].removeprefix(" ")] + lines[index + 1 :]
            break
    negative = "\n".join(negative_lines) if negative_lines is not None else None
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": negative or None, "settings": settings}


def _size(value, column: str) -> tuple[str | None, str | None]:
    """"512x768" -> ("512", "768"); garbage is rejected like any other unreadable setting."""
    if not value:
        return None, None
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", str(value))
    if not match:
        raise RowRejected(column, f"Size is not WIDTHxHEIGHT: {value!r}")
    return match.group(1), match.group(2)


def _from_a1111(text: str, column: str) -> dict:
    parsed = parse_a1111_parameters(text)
    settings = parsed["settings"]
    width, height = _size(settings.get("Size"), column)
    return {
        "prompt": parsed["prompt"],
        "negative_prompt": parsed["negative_prompt"],
        "seed": settings.get("Seed"),
        "steps": settings.get("Steps"),
        "cfg": settings.get("CFG scale"),
        "sampler": settings.get("Sampler"),
        "scheduler": settings.get("Schedule type"),  # A1111 >= 1.9 splits "DPM++ 2M Karras" in two
        "width": width,
        "height": height,
        "model": settings.get("Model"),
    }


# --- ComfyUI -------------------------------------------------------------------------------------

_SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")


def _is_link(value) -> bool:
    """API-format inputs link to another node's output as [node_id, output_index]."""
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool) and isinstance(value[1], int)
    )


class _ComfyGraph:
    def __init__(self, graph: dict):
        self.nodes = {str(key): node for key, node in graph.items() if isinstance(node, dict)}

    def inputs(self, node_id: str) -> dict:
        inputs = self.nodes[node_id].get("inputs")
        return inputs if isinstance(inputs, dict) else {}

    def kind(self, node_id: str) -> str:
        return str(self.nodes[node_id].get("class_type", ""))

    def target(self, node_id: str, name: str, link) -> str:
        target = str(link[0])
        if target not in self.nodes:
            raise RowRejected(
                "prompt", f"ComfyUI node {node_id} input {name!r} links to node {target}, which is not in the graph"
            )
        return target

    def upstream(self, node_id: str, name: str):
        """Node ids reachable backwards from one input, nearest first (breadth-first, no repeats)."""
        value = self.inputs(node_id).get(name)
        if not _is_link(value):
            return
        queue, seen = deque([self.target(node_id, name, value)]), set()
        while queue:
            current = queue.popleft()
            if current in seen:
                continue
            seen.add(current)
            yield current
            for key, linked in self.inputs(current).items():
                if _is_link(linked):
                    queue.append(self.target(current, key, linked))

    def value(self, node_id: str, name: str):
        """An input's value, following a link to a primitive/text node when the value is one."""
        value = self.inputs(node_id).get(name)
        if not _is_link(value):
            return value
        source = self.inputs(self.target(node_id, name, value))
        for key in (name, "value", "text", "string", "seed", "int", "float"):
            if key in source and not _is_link(source[key]):
                return source[key]
        return None

    def texts(self, node_id: str, name: str) -> str | None:
        """The prompt text behind a conditioning input: every text-encode node feeding it (area
        prompts, combines...), depth-first in input order, one per line."""
        value = self.inputs(node_id).get(name)
        if not _is_link(value):
            return None
        found, seen = [], set()

        def visit(current: str):
            if current in seen:
                return
            seen.add(current)
            if "TextEncode" in self.kind(current):
                text = self.value(current, "text")
                if text is None:
                    text = self.value(current, "text_g")  # SDXL encoder
                if isinstance(text, str):
                    found.append(text)
                return
            for key, linked in self.inputs(current).items():
                if _is_link(linked) and key not in ("clip", "model", "vae"):
                    visit(self.target(current, key, linked))

        visit(self.target(node_id, name, value))
        if len(found) == 1:
            return found[0]  # exactly as written
        return "\n".join(text.rstrip("\n") for text in found) or None

    def first_pass_sampler(self) -> str | None:
        """The sampler that starts from noise: hires-fix/refiner passes have another sampler upstream."""
        samplers = sorted((n for n in self.nodes if self.kind(n) in _SAMPLER_NODES), key=_node_order)
        for node_id in samplers:
            if not any(self.kind(up) in _SAMPLER_NODES for up in self.upstream(node_id, "latent_image")):
                return node_id
        return samplers[0] if samplers else None


def _node_order(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _from_comfyui(text: str) -> dict:
    graph = _json(text, "prompt")
    if not isinstance(graph, dict):
        raise RowRejected("prompt", "ComfyUI prompt is not a JSON object of nodes")
    comfy = _ComfyGraph(graph)
    sampler = comfy.first_pass_sampler()
    if sampler is None:
        raise RowRejected("prompt", "ComfyUI prompt has no KSampler node")
    seed = comfy.value(sampler, "seed")
    if seed is None:
        seed = comfy.value(sampler, "noise_seed")  # KSamplerAdvanced
    width = height = None
    for node_id in comfy.upstream(sampler, "latent_image"):
        if "EmptyLatent" in comfy.kind(node_id) or "EmptySD3Latent" in comfy.kind(node_id):
            width, height = comfy.value(node_id, "width"), comfy.value(node_id, "height")
            break
    return {
        "prompt": comfy.texts(sampler, "positive"),
        "negative_prompt": comfy.texts(sampler, "negative"),
        "seed": seed,
        "steps": comfy.value(sampler, "steps"),
        "cfg": comfy.value(sampler, "cfg"),
        "sampler": comfy.value(sampler, "sampler_name"),
        "scheduler": comfy.value(sampler, "scheduler"),
        "width": width,
        "height": height,
        "model": _comfy_model(comfy, sampler),
    }


def _comfy_model(comfy: _ComfyGraph, sampler: str) -> str | None:
    """The checkpoint feeding the sampler's model input (through LoRA loaders and the like)."""
    for node_id in comfy.upstream(sampler, "model"):
        for key in ("ckpt_name", "unet_name"):
            name = comfy.value(node_id, key)
            if isinstance(name, str):
                return name
    return None


# --- InvokeAI ------------------------------------------------------------------------------------


def _from_invokeai(text: str) -> dict:
    """InvokeAI 3+: flat JSON with positive_prompt, negative_prompt, seed, steps, cfg_scale..."""
    data = _json_object(text, "invokeai_metadata")
    model = data.get("model")
    if isinstance(model, dict):
        model = model.get("model_name") or model.get("name")
    return {
        "prompt": data.get("positive_prompt"),
        "negative_prompt": data.get("negative_prompt"),
        "seed": data.get("seed"),
        "steps": data.get("steps"),
        "cfg": data.get("cfg_scale"),
        "sampler": data.get("scheduler"),
        "width": data.get("width"),
        "height": data.get("height"),
        "model": model,
    }


def _split_invoke_prompt(text: str) -> tuple[str, str | None]:
    """Legacy InvokeAI wrote negative prompts inline: "a cat [blurry, text]"."""
    negatives = [part.strip(" ,") for part in re.findall(r"\[([^\[\]]*)\]", text)]
    positive = re.sub(r"\s*\[[^\[\]]*\]", "", text).strip(" ,")
    return positive, ", ".join(n for n in negatives if n) or None


def _from_sd_metadata(text: str) -> dict:
    """InvokeAI 2.x `sd-metadata`: {"model_weights", "image": {"prompt": [{"prompt": ...}], ...}}."""
    data = _json_object(text, "sd-metadata")
    image = data.get("image") if isinstance(data.get("image"), dict) else {}
    prompt = image.get("prompt")
    if isinstance(prompt, list):  # weighted sub-prompts
        prompt = " ".join(str(p.get("prompt", "")) for p in prompt if isinstance(p, dict))
    positive, negative = _split_invoke_prompt(prompt) if isinstance(prompt, str) else (None, None)
    return {
        "prompt": positive,
        "negative_prompt": negative,
        "seed": image.get("seed"),
        "steps": image.get("steps"),
        "cfg": image.get("cfg_scale"),
        "sampler": image.get("sampler"),
        "width": image.get("width"),
        "height": image.get("height"),
        "model": data.get("model_weights"),
    }


_DREAM_OPTION = re.compile(r"\s+-(\w+)\s+(\S+)")
_DREAM_KEYS = {"s": "steps", "S": "seed", "C": "cfg", "A": "sampler", "W": "width", "H": "height"}


def _from_dream(text: str) -> dict:
    """InvokeAI 1.x `Dream`: "a prompt [negative]" -s 50 -S 42 -W 512 -H 768 -C 7.5 -A k_lms"""
    match = re.match(r'^"(.*?)"((?:\s+-\w+\s+\S+)*)\s*$', text.strip(), re.DOTALL)
    if not match:
        raise RowRejected("Dream", "InvokeAI Dream text is not '\"prompt\" -option value ...'")
    positive, negative = _split_invoke_prompt(match.group(1))
    options = {_DREAM_KEYS[key]: value for key, value in _DREAM_OPTION.findall(match.group(2)) if key in _DREAM_KEYS}
    return {"prompt": positive, "negative_prompt": negative, **options}


# --- Fooocus and NovelAI -------------------------------------------------------------------------


def _from_fooocus(data: dict) -> dict:
    """Fooocus' own scheme: JSON in `parameters`; `prompt` is what the user typed (full_prompt adds
    the style and expansion text), resolution is "(width, height)"."""
    match = re.fullmatch(r"\s*\(?\s*(\d+)\s*,\s*(\d+)\s*\)?\s*", str(data.get("resolution") or ""))
    width, height = match.groups() if match else (None, None)
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
    }


def _from_novelai(info: dict) -> dict:
    comment = _json_object(info.get("Comment"), "Comment")
    return {
        "prompt": info.get("Description") or comment.get("prompt"),
        "negative_prompt": comment.get("uc"),
        "seed": comment.get("seed"),
        "steps": comment.get("steps"),
        "cfg": comment.get("scale"),
        "sampler": comment.get("sampler"),
        "width": comment.get("width"),
        "height": comment.get("height"),
        "model": info.get("Source"),  # "Stable Diffusion 1D44365E": NovelAI's model and its hash
    }


def _json(text, column: str):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError, RecursionError) as problem:
        raise RowRejected(column, f"{column} metadata is not valid JSON: {getattr(problem, 'msg', problem)}") from None


def _json_object(text, column: str) -> dict:
    data = _json(text, column)
    if not isinstance(data, dict):
        raise RowRejected(column, f"{column} metadata is not a JSON object")
    return data


# --- EXIF and stealth ----------------------------------------------------------------------------


def decode_user_comment(raw) -> str | None:
    """EXIF UserComment: an 8-byte charset prefix, then the text (A1111 writes UNICODE = UTF-16)."""
    if isinstance(raw, str):
        return raw.rstrip("\0") or None
    if not isinstance(raw, bytes) or not raw:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = body.decode("utf-16", "replace")
        else:  # no BOM: big-endian if the first character's high byte comes first (ASCII text)
            big = len(body) >= 2 and body[0] == 0 and body[1] != 0
            text = body.decode("utf-16-be" if big else "utf-16-le", "replace")
    elif prefix in (b"ASCII\0\0\0", b"\0" * 8):
        text = body.decode("utf-8", "replace")  # tools write UTF-8 under the ASCII label
    else:
        text = raw.decode("utf-8", "replace")
    return text.rstrip("\0") or None


def _exif_comment(image: Image.Image) -> str | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment) or exif.get(ExifTags.Base.UserComment)
    except Exception:  # Pillow raises many kinds on damaged EXIF; a damaged EXIF just has no comment
        return None
    return decode_user_comment(raw)


_STEALTH = {"stealth_pnginfo": False, "stealth_pngcomp": True, "stealth_rgbinfo": False, "stealth_rgbcomp": True}
_LSB_AS_DIGIT = bytes(b"01"[value & 1] for value in range(256))
_SIGNATURE_BITS = 15 * 8


def _lsb_payload(channel_bytes: bytes) -> str | None:
    """A1111 stealth info: column by column, the lowest bit of each value spells a 15-byte
    signature, a 32-bit payload length in bits, then the (optionally gzipped) UTF-8 infotext."""
    if len(channel_bytes) < _SIGNATURE_BITS + 32:
        return None
    bits = channel_bytes.translate(_LSB_AS_DIGIT)  # b"0110..." from the low bits, in C speed

    def as_bytes(start: int, count: int) -> bytes:
        return int(bits[start : start + count], 2).to_bytes(count // 8, "big")

    signature = as_bytes(0, _SIGNATURE_BITS).decode("latin-1")
    if signature not in _STEALTH:
        return None
    length = int(bits[_SIGNATURE_BITS : _SIGNATURE_BITS + 32], 2)
    start = _SIGNATURE_BITS + 32
    if length == 0 or length % 8 or start + length > len(bits):
        raise RowRejected("stealth", f"{signature} data is cut short or has a bad length ({length} bits)")
    payload = as_bytes(start, length)
    try:
        if _STEALTH[signature]:
            payload = gzip.decompress(payload)
        return payload.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as problem:
        raise RowRejected("stealth", f"{signature} data cannot be decoded: {problem}") from None


def _stealth_text(image: Image.Image) -> str | None:
    """The infotext hidden in the pixels (alpha channel first, then RGB), or None."""
    if image.format != "PNG":
        return None  # lossy formats destroy the low bits
    try:
        if image.mode in ("RGBA", "LA"):
            alpha = image.getchannel("A").transpose(Image.Transpose.TRANSPOSE).tobytes()
            text = _lsb_payload(alpha)
            if text is not None:
                return text
        if image.mode in ("RGB", "RGBA"):
            rgb = image.convert("RGB").transpose(Image.Transpose.TRANSPOSE).tobytes()
            return _lsb_payload(rgb)
    except (OSError, ValueError, SyntaxError) as problem:
        raise RowRejected(None, f"image data is damaged: {problem}") from None
    return None


# --- one image -----------------------------------------------------------------------------------


def _text_chunks(image: Image.Image) -> dict:
    """PNG text chunks, including ones written after the image data (which `info` misses)."""
    info = dict(image.info)
    if image.format == "PNG" and not info.keys() & _KNOWN_KEYS:
        try:
            info.update(getattr(image, "text", {}) or {})
        except (OSError, ValueError, SyntaxError):
            pass  # damaged image data; the stealth check below reports it
    return info


_KNOWN_KEYS = {"parameters", "prompt", "invokeai_metadata", "sd-metadata", "Dream", "Comment"}


def _generation(image: Image.Image) -> tuple[dict, str]:
    """(raw generation fields, the metadata chunk they came from), or a rejection."""
    info = _text_chunks(image)
    parameters = info.get("parameters")
    if isinstance(parameters, str):
        if parameters.lstrip().startswith("{"):
            data = _json_object(parameters, "parameters")
            return _from_fooocus(data), "parameters"
        return _from_a1111(parameters, "parameters"), "parameters"
    if isinstance(info.get("invokeai_metadata"), str):
        return _from_invokeai(info["invokeai_metadata"]), "invokeai_metadata"
    if isinstance(info.get("sd-metadata"), str):
        return _from_sd_metadata(info["sd-metadata"]), "sd-metadata"
    if isinstance(info.get("Dream"), str):
        return _from_dream(info["Dream"]), "Dream"
    if isinstance(info.get("prompt"), str):
        return _from_comfyui(info["prompt"]), "prompt"
    if isinstance(info.get("Comment"), str) and (info.get("Software") == "NovelAI" or "Description" in info):
        return _from_novelai(info), "Comment"
    comment = _exif_comment(image)
    if comment:
        if comment.lstrip().startswith("{"):
            return _from_fooocus(_json_object(comment, "UserComment")), "UserComment"
        return _from_a1111(comment, "UserComment"), "UserComment"
    stealth = _stealth_text(image)
    if stealth:
        return _from_a1111(stealth, "stealth"), "stealth"
    raise RowRejected(
        None,
        "no generation metadata found (looked for A1111 parameters, EXIF UserComment and stealth info, "
        "ComfyUI prompt, InvokeAI, Fooocus and NovelAI metadata)",
    )


def _sampler(value, scheduler) -> str | None:
    """Canonical sampler, folding in a separate Karras scheduler ("dpmpp_2m" + "karras")."""
    if value is None:
        return None
    name = str(value).strip()
    karras = isinstance(scheduler, str) and "karras" in scheduler.lower()
    if name.lower().startswith("sample_"):
        name = name[len("sample_") :]  # ComfyUI before mid-2023 named samplers after k-diffusion functions
    if name.lower().endswith("_k"):
        name, karras = name[:-2], True  # InvokeAI spells Karras variants "dpmpp_2m_k"
    canonical = canonical_sampler(name)
    if canonical is None and name.lower().endswith("_a"):
        canonical = canonical_sampler(name[:-2] + "_ancestral")  # legacy InvokeAI: "k_euler_a", "k_dpm_2_a"
    if canonical and karras and f"{canonical}_karras" in A1111_NAMES:
        return f"{canonical}_karras"
    return canonical


def read_image_metadata(path) -> dict:
    """The generation settings stored in one image file, as GENERATION_SCHEMA columns (prompt,
    negative_prompt, seed, steps, cfg, sampler, sampler_original, width, height, model).

    Raises RowRejected (with the column = the metadata chunk) when the file is no image, carries no
    recognised metadata, or holds values that fail the usual checks.
    """
    try:
        with Image.open(path) as image:
            raw, column = _generation(image)
    except RowRejected:
        raise
    except UnidentifiedImageError:
        raise RowRejected(None, "not an image Pillow can read") from None
    except Image.DecompressionBombError as problem:
        raise RowRejected(None, f"image too large to open safely: {problem}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as problem:
        raise RowRejected(None, f"cannot read image: {problem}") from None

    def checked(parse, key, **options):
        try:
            return parse(raw.get(key), key, **options)
        except RowRejected as problem:
            raise RowRejected(column, f"{column}: {problem.reason}") from None

    prompt = raw.get("prompt")
    try:
        check_prompt(prompt)
    except RowRejected as problem:
        raise RowRejected(column, f"{column}: {problem.reason}") from None
    sampler_original = optional_text(raw.get("sampler"))
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
    }
