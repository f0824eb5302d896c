"""A regenerated image's settings as AUTOMATIC1111 writes them: the PNG `parameters` text chunk.

    PROMPT
    Negative prompt: NEG
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 6ce0161689, Model: v1-5, ...

A value holding a comma, a colon or a newline is JSON-quoted (A1111's `quote()` in
modules/infotext_utils.py), so any prompt writer's paste box, and this project's own reader
(spellbook.ingest.readers.image_metadata), read it back field for field.
"""
from __future__ import annotations

import json


def quote(value) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def number(value) -> str:
    """7.0 -> "7", 7.5 -> "7.5" (A1111's spelling of CFG scale)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def infotext(prompt: str, negative_prompt: str | None, settings: dict) -> str:
    """A1111 infotext from the prompt, the negative prompt and ordered settings (None left out)."""
    lines = [prompt or ""]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [f"{key}: {quote(value)}" for key, value in settings.items() if value is not None and value != ""]
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def save_png(image, path, text: str) -> None:
    """The image with its infotext in a `parameters` chunk (iTXt when the text is not Latin-1),
    written beside its final name first so a reader never sees half a file."""
    import os
    from pathlib import Path

    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    info = PngInfo()
    info.add_text("parameters", text)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG", pnginfo=info)
    os.replace(partial, path)
