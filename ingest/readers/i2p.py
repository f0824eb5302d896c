"""I2P (Inappropriate Image Prompts, AIML-TUDA/i2p) CSV: prompts collected from Lexica, with the
seed, guidance and size that reproduce the image: prompt, categories, ..., lexica_url, sd_seed,
sd_guidance_scale, sd_image_width, sd_image_height, sd_model."""
from __future__ import annotations

from urllib.parse import urlparse

from spellbook.ingest.readers.common import (
    UINT32_MAX,
    CsvSource,
    check_prompt,
    optional_text,
    parse_float,
    parse_int,
)


def lexica_id(url) -> str | None:
    """"https://lexica.art/prompt/7b53bb97-..." -> "7b53bb97-..." (Lexica's prompt id)."""
    if not url:
        return None
    last = urlparse(url).path.rstrip("/").rsplit("/", 1)[-1]
    return last or None


class I2PCsvSource(CsvSource):
    format = "i2p-csv"

    def normalise(self, fields: dict) -> dict:
        return {
            "source_id": lexica_id(fields.get("lexica_url")),
            "prompt": check_prompt(fields.get("prompt")),
            "seed": parse_int(fields.get("sd_seed"), "sd_seed", maximum=UINT32_MAX),
            "cfg": parse_float(fields.get("sd_guidance_scale"), "sd_guidance_scale"),
            "width": parse_int(fields.get("sd_image_width"), "sd_image_width"),
            "height": parse_int(fields.get("sd_image_height"), "sd_image_height"),
            "model": optional_text(fields.get("sd_model")),
            # image_url stays NULL: the lexica_url is a page about the prompt, not an image
        }
