"""AUTOMATIC1111 "infotext", the text format that A1111 and its forks (Forge, reForge, SD.Next),
Fooocus' A1111 scheme, Civitai's generator and the ComfyUI saver nodes all write:

    PROMPT (may span lines)
    Negative prompt: NEG (may span lines)
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512, ...

Parsed by A1111's own rules (`parse_generation_parameters` in modules/infotext_utils.py): the
last line is the settings line only if it holds at least three `Key: value` pairs; a value may be
"JSON-quoted, with commas"; a `WxH` value also gives `Key-1`/`Key-2`; `First pass size` (old
hires fix) is the size the model generated at. Unlike A1111, bare JSON values (`Civitai
resources: [{...}, {...}]`, `Hashes: {...}`) are kept whole, and prompt lines are kept exactly as
written (A1111 strips each line) apart from CRLF line ends.
"""
from __future__ import annotations

import json
import math
import re

from spellbook.ingest.readers.common import RowRejected

# One "Key: value" pair of the settings line, matched where the previous one ended; a value may be
# "quoted, with commas" (a JSON string).
_A1111_PAIR = re.compile(r'\s*(\w[\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)\s*(?:,|$)')
_KEY = re.compile(r"\s*(\w[\w \-/+.()]*?):\s*")
_AFTER_JSON = re.compile(r"\s*(?:,|$)")
_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE = "Negative prompt:"


def _json_end(line: str, start: int, budget: list[int]) -> int | None:
    """Where the JSON array/object starting at line[start] ends (just past its closing bracket),
    or None. Jumps from one bracket/quote to the next in C; `budget` caps the characters scanned
    over the whole line, so a line of unbalanced brackets cannot make parsing quadratic."""
    depth, in_string = 0, False
    position = start
    while True:
        match = _JSON_SPECIAL.search(line, position)
        if match is None:
            budget[0] -= len(line) - position
            return None
        index = match.start()
        budget[0] -= index - position + 1
        if budget[0] < 0:
            return None
        char = line[index]
        position = index + 1
        if in_string:
            if char == "\\":
                position += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return position


def settings_pairs(line: str) -> dict[str, str]:
    """Key/value pairs, matched pair by pair (a segment without "Key:" is skipped up to its comma).
    Walking forward like this keeps a megabyte-long prompt line linear: re.findall would retry at
    every character and take quadratic time."""
    settings: dict[str, str] = {}
    position, budget = 0, [4 * len(line) + 4096]
    while position < len(line):
        key_match = _KEY.match(line, position)
        if key_match is not None and key_match.end() < len(line) and line[key_match.end()] in "[{" and budget[0] > 0:
            end = _json_end(line, key_match.end(), budget)
            tail = _AFTER_JSON.match(line, end) if end is not None else None
            if tail is not None:
                settings[key_match.group(1).strip()] = line[key_match.end() : end]
                position = tail.end()
                continue
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
    when there is none; prompt is "" when the file recorded only a negative prompt.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    while len(lines) > 1 and not lines[-1].strip():  # trailing newlines after the settings line
        lines.pop()
    settings = settings_pairs(lines[-1])
    if len(settings) >= 3:
        lines = lines[:-1]
    else:
        settings = {}
    prompt_lines, negative_lines = lines, None
    for index, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith(_NEGATIVE):
            prompt_lines = lines[:index]
            negative_lines = [stripped[len(_NEGATIVE) :].lstrip()] + lines[index + 1 :]
            break
    negative = "\n".join(negative_lines) if negative_lines is not None else None
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": negative or None, "settings": settings}


# --- settings -> fields --------------------------------------------------------------------------

# the settings that become columns (looked up without regard to case: savers write "CFG Scale")
_COLUMNS = {
    "seed": ("Seed",),
    "steps": ("Steps",),
    "cfg": ("CFG scale", "Guidance Scale", "CFG"),
    "sampler": ("Sampler",),
    "model": ("Model", "Model name"),
    "model_hash": ("Model hash",),
}
_SIZE_KEYS = {"size", "first pass size", "size-1", "size-2", "first pass size-1", "first pass size-2"}


def _lookup(settings: dict[str, str], names) -> tuple[str | None, str | None]:
    lowered = {key.lower(): key for key in settings}
    for name in names:
        key = lowered.get(name.lower())
        if key is not None:
            return key, settings[key]
    return None, None


def _size(value, column: str) -> tuple[int | None, int | None]:
    """"512x768" -> (512, 768); garbage is rejected like any other unreadable setting."""
    if value is None or not str(value).strip():
        return None, None
    match = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", str(value))
    if not match:
        raise RowRejected(column, f"Size is not WIDTHxHEIGHT: {value!r}")
    return int(match.group(1)), int(match.group(2))


def old_hires_first_pass(width: int, height: int) -> tuple[int, int]:
    """A1111's processing.old_hires_fix_first_pass_dimensions: "First pass size: 0x0" meant this."""
    if width <= 0 or height <= 0:
        return width, height
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def _json_value(value: str):
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
    return value


def generator_from_settings(settings: dict[str, str]) -> str | None:
    """Which tool wrote this infotext, from the marks each one leaves."""
    _, app = _lookup(settings, ("App",))
    if app and "sd.next" in app.lower():
        return "SD.Next"
    if any(key in settings for key in ("Civitai resources", "Civitai metadata")):
        return "Civitai"
    _, version = _lookup(settings, ("Version",))
    version = (version or "").strip()
    if re.match(r"v\d", version):
        return "AUTOMATIC1111"
    if re.match(r"f\d+\.\d+(\.\d+)?(v\d+)?-v", version):
        return "reForge"
    if re.match(r"f\d", version) or version.lower() in ("classic", "neo") or version.lower().startswith("neo"):
        return "Forge"
    if version.lower().startswith("comfyui"):
        return "ComfyUI"
    if version.lower().startswith("ruinedfooocus"):
        return "RuinedFooocus"
    if version.lower().startswith("fooocus"):
        return "Fooocus"
    if version.lower().startswith("swarm"):
        return "SwarmUI"
    if settings.get("Steps") is not None and not version:
        _, sampler = _lookup(settings, ("Sampler",))
        if sampler and re.fullmatch(r"[a-z0-9_]+", sampler.strip()):
            return "ComfyUI"  # ComfyUI saver nodes write ComfyUI's sampler names ("euler_ancestral_karras"); A1111 never does
        return "AUTOMATIC1111"  # the format's own tool; early A1111 wrote no Version
    return None


def from_a1111(text: str, column: str) -> dict:
    """Infotext -> the raw generation fields (values still as text; read_image_metadata checks them)."""
    if not text.strip():
        raise RowRejected(column, f"{column} is empty")
    parsed = parse_a1111_parameters(text)
    settings = parsed["settings"]
    fields: dict = {"prompt": parsed["prompt"], "negative_prompt": parsed["negative_prompt"]}
    used = set()
    for field_name, names in _COLUMNS.items():
        key, value = _lookup(settings, names)
        if key is not None:
            used.add(key)
            fields[field_name] = value
    _, schedule = _lookup(settings, ("Schedule type", "Scheduler"))
    fields["scheduler"] = schedule

    # Size, or the first pass of an old-style hires fix (A1111's restore_old_hires_fix_params)
    size_key, size_value = _lookup(settings, ("Size",))
    width, height = _size(size_value, column)
    if width is None and "Size-1" in settings:
        width, height = _size(f"{settings.get('Size-1')}x{settings.get('Size-2')}", column)
    _, first_pass = _lookup(settings, ("First pass size",))
    if first_pass is not None:
        first_width, first_height = _size(first_pass, column)
        if first_width == 0 or first_height == 0:
            first_width, first_height = old_hires_first_pass(width or 512, height or 512)
        if first_width is not None:
            width, height = first_width, first_height
    fields["width"], fields["height"] = width, height

    _, hashes = _lookup(settings, ("Hashes",))
    if fields.get("model_hash") is None and hashes:
        decoded = _json_value(hashes)
        if isinstance(decoded, dict) and isinstance(decoded.get("model"), str):
            fields["model_hash"] = decoded["model"]

    extra = {}
    for key, value in settings.items():
        if key in used or (key.lower() in _SIZE_KEYS and first_pass is None):
            continue
        extra[key] = _json_value(value)
    fields["extra"] = extra
    fields["generator"] = generator_from_settings(settings)
    return fields
