"""Krea open-prompts CSV: `prompt`, and `raw_data`, a JSON document per row whose
`raw_discord_data` holds what the Stable Diffusion Discord bot reported (seed, size, steps, cfg...)."""
from __future__ import annotations

import json
import re

from spellbook.ingest.readers.common import (
    UINT32_MAX,
    CsvSource,
    RowRejected,
    check_prompt,
    http_url,
    iso_from_unix,
    parse_bool,
    parse_float,
    parse_int,
)

# Early rows (August 2022) have no settings, only the bot's message:
#   Dreamt in `43.21s` for `!dream "A Landscape by ..." -n 9 -i -S 3247097371` The seeds ...
# and some of them have an empty `prompt` column; the prompt is then taken from that message.
_DREAM_COMMAND = re.compile(r'!dream "(.*?)"(?=\s+-\w|\s*`)', re.DOTALL)


def _raw_data(text) -> tuple[dict, dict]:
    """(raw_data, raw_discord_data) parsed, or a rejection naming column raw_data."""
    if text is None or not text.strip():
        return {}, {}
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as problem:
        raise RowRejected("raw_data", f"raw_data is not valid JSON: {getattr(problem, 'msg', problem)}") from None
    if not isinstance(data, dict):
        raise RowRejected("raw_data", f"raw_data is a JSON {type(data).__name__}, not an object")
    discord = data.get("raw_discord_data") or {}
    if not isinstance(discord, dict):
        raise RowRejected("raw_data", "raw_data.raw_discord_data is not an object")
    return data, discord


def _prompt(fields: dict, discord: dict) -> str:
    prompt = fields.get("prompt")
    if not prompt:
        match = _DREAM_COMMAND.search(str(discord.get("content") or ""))
        if match:
            prompt = match.group(1)
    return check_prompt(prompt)


def _setting(parse, discord: dict, key: str, **options):
    """Parse one raw_discord_data value; a rejection names the CSV column and the key inside it."""
    try:
        return parse(discord.get(key), f"raw_discord_data.{key}", **options)
    except RowRejected as problem:
        raise RowRejected("raw_data", problem.reason) from None


class KreaCsvSource(CsvSource):
    format = "krea-csv"
    required_columns = ("prompt", "raw_data")

    def normalise(self, fields: dict) -> dict:
        data, discord = _raw_data(fields.get("raw_data"))
        return {
            "prompt": _prompt(fields, discord),
            "seed": _setting(parse_int, discord, "seed", maximum=UINT32_MAX),
            "steps": _setting(parse_int, discord, "num_step"),  # absent in early rows: NULL, not 0
            "cfg": _setting(parse_float, discord, "cfg_scale"),  # 500 occurs and is kept
            "width": _setting(parse_int, discord, "width"),
            "height": _setting(parse_int, discord, "height"),
            # Krea's own copy when it has one ("PENDING" otherwise), else the Discord attachment
            "image_url": http_url(data.get("image_uri")) or http_url(discord.get("image_uri")),
            "created_at": _setting(iso_from_unix, discord, "timestamp"),
            "is_grid": _setting(parse_bool, discord, "is_grid"),
        }
