"""Lexica search API responses: {"images": [{id, gallery, src, srcSmall, prompt, width, height, seed,
grid, model, guidance, promptid, nsfw}, ...]}."""
from __future__ import annotations

from typing import Iterator

from spellbook.ingest.readers.common import (
    UINT32_MAX,
    RowRejected,
    batches_from_records,
    check_prompt,
    http_url,
    load_json,
    optional_text,
    parse_bool,
    parse_float,
    parse_int,
)
from spellbook.ingest.records import InputError, ReadBatch


class LexicaJsonSource:
    format = "lexica-json"

    def __init__(self, path):
        self.path = str(path)
        data = load_json(path)
        if isinstance(data, dict) and isinstance(data.get("images"), list):
            self._records = data["images"]
        elif isinstance(data, list):
            self._records = data  # the "images" list saved on its own
        else:
            raise InputError(path, 'expected {"images": [...]} as the Lexica search API returns it')
        self.num_rows = len(self._records)

    def batches(self, batch_size: int, skip_rows: int = 0) -> Iterator[ReadBatch]:
        records = enumerate(self._records, start=1)
        return batches_from_records(self.path, records, normalise_lexica_record, batch_size, skip_rows)


def normalise_lexica_record(record) -> dict:
    if not isinstance(record, dict):
        raise RowRejected(None, f"image record is a {type(record).__name__}, not an object")
    nsfw = parse_bool(record.get("nsfw"), "nsfw")
    return {
        "source_id": optional_text(record.get("id")),
        "prompt": check_prompt(record.get("prompt")),
        # Lexica sends the seed as a string; "" means it has none, anything else must be a uint32.
        "seed": parse_int(record.get("seed"), "seed", maximum=UINT32_MAX),
        "cfg": parse_float(record.get("guidance"), "guidance"),
        "width": parse_int(record.get("width"), "width"),
        "height": parse_int(record.get("height"), "height"),
        "model": optional_text(record.get("model")),
        "image_url": http_url(record.get("src")),
        "image_nsfw": None if nsfw is None else float(nsfw),  # Lexica only says yes/no
        "is_grid": parse_bool(record.get("grid"), "grid"),
    }
