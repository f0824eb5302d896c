"""The readers: one module per source format, each turning a file into normalised record batches
(spellbook.ingest.records) and knowing nothing of SQLite. This module is the registry: which
formats exist, how to tell them apart, and how to open one.

To add a prompt corpus format: write a reader module (row checks and CSV/JSON plumbing are in
`common`), add it to PROMPT_FORMATS, and teach detect_format to recognise it.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spellbook.ingest.readers import diffusiondb, i2p, image_folder, krea, lexica
from spellbook.ingest.readers.common import IMAGE_SUFFIXES, load_json, read_csv_header
from spellbook.ingest.readers.laion import open_laion, parquet_files
from spellbook.ingest.records import InputError, Source


# Prompt corpora: format name -> the Source that reads it.
PROMPT_FORMATS = {
    "diffusiondb-parquet": diffusiondb.DiffusionDBParquetSource,
    "diffusiondb-json": diffusiondb.DiffusionDBJsonSource,
    "diffusiondb-part": diffusiondb.DiffusionDBPartSource,
    "diffusiondb-csv": diffusiondb.DiffusionDBCsvSource,
    "lexica-json": lexica.LexicaJsonSource,
    "krea-csv": krea.KreaCsvSource,
    "i2p-csv": i2p.I2PCsvSource,
    "image-metadata": image_folder.ImageMetadataSource,
}
FORMATS = tuple(PROMPT_FORMATS)
SUPPORTED = ", ".join(FORMATS)

__all__ = ["FORMATS", "PROMPT_FORMATS", "SUPPORTED", "detect_format", "open_laion", "open_prompt_source", "parquet_files"]


# --- format detection ----------------------------------------------------------------------------

_DIFFUSIONDB_PARQUET_HINTS = {"image_name", "part_id", "step", "sampler", "cfg", "user_name", "image_nsfw"}
_DIFFUSIONDB_CSV_HINTS = {"seed", "step", "cfg", "sampler", "user_name", "image_nsfw"}


def _unknown(path, what: str) -> InputError:
    return InputError(path, f"{what}; supported formats: {SUPPORTED}")


def _detect_parquet(path: Path) -> str:
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as problem:
        raise InputError(path, f"not a readable Parquet file: {problem}") from None
    if "prompt" in names and names & _DIFFUSIONDB_PARQUET_HINTS:
        return "diffusiondb-parquet"
    raise _unknown(path, f"a Parquet file with columns {', '.join(sorted(names))} is no prompt corpus I know")


def _detect_json(path: Path) -> str:
    data = load_json(path)
    if isinstance(data, dict) and "images" in data:
        return "lexica-json"
    if isinstance(data, list) and data and isinstance(data[0], dict) and "prompt" in data[0]:
        return "lexica-json"  # the "images" list saved on its own
    if isinstance(data, dict) and data:
        first = next(iter(data.values()))
        if isinstance(first, dict) and "p" in first:
            return "diffusiondb-json"
    raise _unknown(path, 'JSON of this shape is no prompt corpus I know (Lexica: {"images": [...]}; '
                   'DiffusionDB part: {"<image>.png": {"p": ...}})')


def _detect_csv(path: Path) -> str:
    names = set(read_csv_header(path))
    if "raw_data" in names:
        return "krea-csv"
    if "sd_seed" in names or "lexica_url" in names:
        return "i2p-csv"
    if "prompt" in names and names & _DIFFUSIONDB_CSV_HINTS:
        return "diffusiondb-csv"
    raise _unknown(path, f"a CSV with columns {', '.join(sorted(names))} is no prompt corpus I know")


def _sniff(path: Path) -> str | None:
    """Magic bytes, for files whose name says nothing."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(b"PAR1"):
        return "diffusiondb-parquet"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")) or head[8:12] in (b"WEBP", b"avif"):
        return "image-metadata"
    return None


def detect_format(path) -> str:
    """One of FORMATS, from the extension and a peek at the columns/keys; InputError if none fits."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        return "diffusiondb-part" if diffusiondb.is_part(path) else "image-metadata"
    suffix = path.suffix.lower()
    if suffix == ".zip":
        if diffusiondb.is_part(path):
            return "diffusiondb-part"
        raise _unknown(path, "a zip without a DiffusionDB part-NNNNNN.json is no prompt corpus I know")
    if suffix == ".parquet":
        return _detect_parquet(path)
    if suffix == ".json":
        return _detect_json(path)
    if suffix == ".csv":
        return _detect_csv(path)
    if suffix in IMAGE_SUFFIXES:
        return "image-metadata"
    sniffed = _sniff(path)
    if sniffed == "diffusiondb-parquet":
        return _detect_parquet(path)
    if sniffed:
        return sniffed
    raise _unknown(path, "cannot tell the format of this file")


def open_prompt_source(path, source_format: str | None = None) -> Source:
    """Open a prompt corpus file (or a folder of images) as a Source; InputError if unreadable."""
    if source_format is None:
        source_format = detect_format(path)
    if source_format not in PROMPT_FORMATS:
        raise InputError(path, f"unknown format {source_format!r}; supported formats: {SUPPORTED}")
    if not Path(path).exists():
        raise InputError(path, "no such file or folder")
    return PROMPT_FORMATS[source_format](path)
