"""DiffusionDB (poloclub/diffusiondb): metadata Parquet, per-part JSON, and the CSV export.

The Parquet reader is columnar end to end (pyarrow.compute over whole batches), because
metadata-large.parquet has 14M rows; only rejected rows, which are rare, are looked at one by one.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spellbook.ingest.readers.common import (
    MAX_PROMPT_CHARS,
    UINT32_MAX,
    CsvSource,
    RowRejected,
    batches_from_records,
    check_prompt,
    iso_from_text,
    load_json,
    optional_text,
    parse_float,
    parse_int,
)
from spellbook.ingest.readers.parquet import group_batches
from spellbook.ingest.records import GENERATION_SCHEMA, InputError, ReadBatch, Rejection
from spellbook.text.samplers import DIFFUSIONDB_CODES, canonical_sampler

# DiffusionDB publishes its images one zip per part of 1,000, beside that part's JSON; no URL serves
# one image. 2M (PNG): images/part-000001.zip ... part-002000.zip. Large (WebP):
# diffusiondb-large-part-1/part-000001.zip ... part-001000.zip, diffusiondb-large-part-2/part-001001.zip ...
REPOSITORY = "https://huggingface.co/datasets/poloclub/diffusiondb"
LARGE_PARTS_PER_FOLDER = 1000
_PART_IN_NAME = re.compile(r"part-(\d+)")


ARCHIVES = f"{REPOSITORY}/blob/main/"  # the page of each zip (the zip itself is ~500 MB)


def image_archive(part_id, image_name) -> str | None:
    """The page of the part archive an image lives in; None unless both the part and the file name
    are known. Large's images are WebP, 2M's PNG."""
    if part_id is None or not image_name:
        return None
    part = int(part_id)
    if str(image_name).lower().endswith(".webp"):
        return f"{ARCHIVES}diffusiondb-large-part-{(part - 1) // LARGE_PARTS_PER_FOLDER + 1}/part-{part:06d}.zip"
    return f"{ARCHIVES}images/part-{part:06d}.zip"


# --- metadata.parquet / metadata-large.parquet ---------------------------------------------------

# Column -> the kind of Arrow type it must have. Only `prompt` is required; a missing optional
# column becomes NULL.
_PARQUET_COLUMNS = {
    "image_name": "string",
    "prompt": "string",
    "part_id": "integer",
    "seed": "integer",
    "step": "integer",
    "cfg": "number",
    "sampler": "integer",
    "width": "integer",
    "height": "integer",
    "user_name": "string",
    "timestamp": "timestamp",
    "image_nsfw": "number",
    "prompt_nsfw": "number",
}
_TYPE_CHECKS = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "integer": pa.types.is_integer,
    "number": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    "timestamp": pa.types.is_timestamp,
}

# Sampler code -> canonical name, indexable by any uint8 code; 9 ("others") and unknown codes -> NULL.
_SAMPLER_LOOKUP = pa.array([DIFFUSIONDB_CODES.get(code) for code in range(256)], pa.string())
_NARROW_UNSIGNED = (pa.uint8(), pa.uint16(), pa.uint32())


class DiffusionDBParquetSource:
    format = "diffusiondb-parquet"

    def __init__(self, path):
        self.path = str(path)
        try:
            self._file = pq.ParquetFile(path)
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except (OSError, pa.ArrowException) as problem:
            raise InputError(path, f"not a readable Parquet file (truncated or not Parquet?): {problem}") from None
        schema = self._file.schema_arrow
        if "prompt" not in schema.names:
            raise InputError(path, "missing required column 'prompt'", column="prompt")
        for name, kind in _PARQUET_COLUMNS.items():
            if name in schema.names and not _TYPE_CHECKS[kind](schema.field(name).type):
                raise InputError(
                    path, f"column {name} has type {schema.field(name).type}; expected {kind}", column=name
                )
        self._columns = [name for name in _PARQUET_COLUMNS if name in schema.names]
        self.num_rows = self._file.metadata.num_rows

    def batches(self, batch_size: int, skip_rows: int = 0) -> Iterator[ReadBatch]:
        groups, to_drop, next_row = self._row_groups_from(skip_rows)
        if not groups:
            return
        batches = group_batches(self._file, self._columns, batch_size, groups)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as problem:
                raise InputError(self.path, f"cannot read Parquet data: {problem}", row=next_row) from None
            if to_drop:  # resume point inside this batch: skip the rows already loaded
                dropped = min(to_drop, batch.num_rows)
                batch, to_drop, next_row = batch.slice(dropped), to_drop - dropped, next_row + dropped
                if batch.num_rows == 0:
                    continue
            rows, rejected = normalise_parquet_batch(batch, next_row, self.path)
            yield ReadBatch(rows=rows, rejected=rejected, rows_read=batch.num_rows)
            next_row += batch.num_rows

    def _row_groups_from(self, skip_rows: int) -> tuple[list[int], int, int]:
        """Row groups still to read, rows to drop from the first of them, 1-based row it starts at."""
        metadata = self._file.metadata
        first_row = 1
        for index in range(metadata.num_row_groups):
            rows = metadata.row_group(index).num_rows
            if skip_rows < rows:
                return list(range(index, metadata.num_row_groups)), skip_rows, first_row
            skip_rows -= rows
            first_row += rows
        return [], 0, first_row


def _column(batch: pa.RecordBatch, name: str, arrow_type: pa.DataType) -> pa.Array:
    if name not in batch.schema.names:
        return pa.nulls(batch.num_rows, arrow_type)
    return batch.column(name)


def _as_int64(array: pa.Array) -> pa.Array:
    return array if array.type == pa.int64() else pc.cast(array, pa.int64())


def _as_float64(array: pa.Array) -> pa.Array:
    """float32 -> float64 through the shortest decimal, so cfg 7.3 stays 7.3 rather than
    7.300000190734863 (and matches the CSV export); NaN becomes NULL."""
    if pa.types.is_floating(array.type) and array.type.bit_width == 32:
        array = pc.cast(pc.cast(array, pa.string()), pa.float64())
    elif array.type != pa.float64():
        array = pc.cast(array, pa.float64())
    return pc.if_else(pc.is_finite(array), array, pa.scalar(None, pa.float64()))


def _iso_created_at(timestamps: pa.Array) -> pa.Array:
    """timestamp[any unit, UTC] -> "YYYY-MM-DDTHH:MM:SSZ". Casting to text and patching the
    separator is ~30x faster than pc.strftime, which this reader would otherwise spend most time in."""
    seconds = pc.cast(timestamps, pa.timestamp("s", tz=timestamps.type.tz), safe=False)  # drop fractions
    text = pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.string())  # "2022-08-14 00:45:00", UTC wall time
    return pc.binary_join_element_wise(pc.utf8_replace_slice(text, start=10, stop=11, replacement="T"), "Z", "")


def _sampler_columns(codes: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(canonical name, code as text); code 9 "others" and unknown codes have no canonical name."""
    in_range = pc.and_(pc.greater_equal(codes, 0), pc.less_equal(codes, 255))
    index = pc.if_else(in_range, pc.cast(codes, pa.int64(), safe=False), pa.scalar(None, pa.int64()))
    return pc.take(_SAMPLER_LOOKUP, index), pc.cast(codes, pa.string())


def _image_archives(part_ids: pa.Array, names: pa.Array) -> pa.Array:
    """image_archive() for whole columns: NULL where the part or the name is missing."""
    parts = pc.cast(part_ids, pa.int64())
    padded = pc.utf8_lpad(pc.cast(parts, pa.string()), width=6, padding="0")
    large = pc.fill_null(pc.ends_with(pc.utf8_lower(names), ".webp"), False)
    folder = pc.cast(pc.add(pc.divide(pc.subtract(parts, 1), LARGE_PARTS_PER_FOLDER), 1), pa.string())
    prefix = pc.if_else(large, pc.binary_join_element_wise(ARCHIVES + "diffusiondb-large-part-", folder, "/part-", ""), pa.scalar(ARCHIVES + "images/part-"))
    with_name = pc.if_else(pc.is_null(names), pa.scalar(None, pa.string()), prefix)
    return pc.binary_join_element_wise(with_name, padded, ".zip", "")  # NULL if part or name is NULL


def _problems(prompt: pa.Array, seed: pa.Array) -> dict[str, pa.Array]:
    """Boolean arrays, one per reason a row is rejected."""
    length = pc.utf8_length(prompt)
    problems = {
        "missing": pc.is_null(prompt),
        "empty": pc.or_(pc.equal(length, 0), pc.utf8_is_space(prompt)),
        "long": pc.greater(length, MAX_PROMPT_CHARS),
    }
    if seed.type not in _NARROW_UNSIGNED:  # a uint32 cannot be outside 0..2^32-1; others can
        problems["seed"] = pc.or_(pc.less(seed, 0), pc.greater(seed, UINT32_MAX))
    return problems


def _rejections(
    path: str, first_row: int, problems: dict, prompt: pa.Array, seed: pa.Array
) -> tuple[list[Rejection], pa.Array]:
    """The Rejection for each flagged row (first reason wins), and the mask of rows to keep."""
    any_problem = pc.fill_null(pc.or_(pc.or_(problems["missing"], problems["empty"]), problems["long"]), True)
    if "seed" in problems:
        any_problem = pc.or_(any_problem, pc.fill_null(problems["seed"], False))
    rejected = []
    for index in pc.indices_nonzero(any_problem).to_pylist():
        row = first_row + index
        if problems["missing"][index].as_py():
            rejected.append(Rejection(path, row, "prompt", "prompt is missing"))
        elif problems["empty"][index].as_py():
            rejected.append(Rejection(path, row, "prompt", "prompt is empty"))
        elif problems["long"][index].as_py():
            length = len(prompt[index].as_py())
            reason = f"prompt is {length:,} characters long; the limit is {MAX_PROMPT_CHARS:,}"
            rejected.append(Rejection(path, row, "prompt", reason))
        else:
            rejected.append(Rejection(path, row, "seed", f"seed {seed[index].as_py()} is outside 0..{UINT32_MAX}"))
    return rejected, pc.invert(any_problem)


def normalise_parquet_batch(batch: pa.RecordBatch, first_row: int, path: str) -> tuple[pa.RecordBatch, list[Rejection]]:
    """One DiffusionDB metadata batch -> GENERATION_SCHEMA rows + rejections, without per-row Python."""
    n = batch.num_rows
    prompt = pc.cast(_column(batch, "prompt", pa.string()), pa.string())
    raw_seed = _column(batch, "seed", pa.int64())
    names = pc.cast(_column(batch, "image_name", pa.string()), pa.string())
    sampler, sampler_original = _sampler_columns(_column(batch, "sampler", pa.uint8()))
    timestamps = _column(batch, "timestamp", pa.timestamp("s", tz="UTC"))
    no_text = pa.nulls(n, pa.string())
    try:
        columns = {
            "source_row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
            "source_id": names,
            "prompt": prompt,
            "negative_prompt": no_text,
            # unchecked cast: a wrapped uint64 is rejected below by the range check on the raw column
            "seed": pc.cast(raw_seed, pa.int64(), safe=False),
            "steps": _as_int64(_column(batch, "step", pa.int64())),
            "cfg": _as_float64(_column(batch, "cfg", pa.float64())),
            "sampler": sampler,
            "sampler_original": sampler_original,
            "width": _as_int64(_column(batch, "width", pa.int64())),
            "height": _as_int64(_column(batch, "height", pa.int64())),
            "model": no_text,  # DiffusionDB is Stable Diffusion v1.x, but no row says which checkpoint
            "image_url": no_text,  # no URL serves one image: see image_archive
            "image_archive": _image_archives(_column(batch, "part_id", pa.uint16()), names),
            "image_path": no_text,
            "user_hash": pc.cast(_column(batch, "user_name", pa.string()), pa.string()),
            "created_at": _iso_created_at(timestamps),
            "image_nsfw": _as_float64(_column(batch, "image_nsfw", pa.float64())),
            "prompt_nsfw": _as_float64(_column(batch, "prompt_nsfw", pa.float64())),
            "is_grid": pa.nulls(n, pa.bool_()),
            "model_hash": no_text,
            "generator": no_text,
            "extra": no_text,
        }
    except pa.ArrowInvalid as problem:  # e.g. a uint64 seed beyond int64: the file is not DiffusionDB's
        raise InputError(path, f"cannot convert values: {problem}", row=first_row) from None
    rows = pa.RecordBatch.from_arrays([columns[field.name] for field in GENERATION_SCHEMA], schema=GENERATION_SCHEMA)
    problems = _problems(prompt, raw_seed)
    if not any(pc.any(flags).as_py() for flags in problems.values()):
        return rows, []
    rejected, keep = _rejections(path, first_row, problems, prompt, raw_seed)
    return rows.filter(keep), rejected


# --- part-NNNNNN.json, and a downloaded part (its folder, or its zip) ------------------------------

# A part's JSON is a few hundred kB; a zip member bigger than this is not one (nor an image to serve).
MAX_PART_JSON_BYTES = 64 << 20


def _part_id(name: str) -> int | None:
    match = _PART_IN_NAME.search(name)
    return int(match.group(1)) if match else None


def _part_entries(path, data) -> list:
    if not isinstance(data, dict):
        raise InputError(path, 'expected a JSON object {"<image>.png": {"p": ..., "se": ..., ...}}')
    return list(data.items())


class DiffusionDBJsonSource:
    """{"<image>.png": {"p": prompt, "se": seed, "c": cfg, "st": steps, "sa": sampler}} per part.

    When the part's images lie beside the JSON (an extracted part), each generation gets its image."""

    format = "diffusiondb-json"

    def __init__(self, path):
        self.path = str(path)
        self._items = _part_entries(path, load_json(path))
        self.num_rows = len(self._items)
        self._part_id = _part_id(Path(path).name)  # the archive needs it; only the name has it
        folder = Path(path).resolve().parent
        # image name -> its path under image_root, for the images that are there
        self._local = {n: n for n, _ in self._items if isinstance(n, str) and "/" not in n and (folder / n).is_file()}
        self.image_root = str(folder) if self._local else None

    def batches(self, batch_size: int, skip_rows: int = 0) -> Iterator[ReadBatch]:
        return batches_from_records(self.path, enumerate(self._items, start=1), self._normalise, batch_size, skip_rows)

    def _normalise(self, item) -> dict:
        name, record = item
        if not isinstance(record, dict):
            raise RowRejected(None, f"entry {name!r} is not an object")
        sampler_original = optional_text(record.get("sa"))
        return {
            "source_id": name,
            "prompt": check_prompt(record.get("p"), "p"),
            "seed": parse_int(record.get("se"), "se", maximum=UINT32_MAX),
            "steps": parse_int(record.get("st"), "st"),
            "cfg": parse_float(record.get("c"), "c"),
            "sampler": canonical_sampler(sampler_original),
            "sampler_original": sampler_original,
            "image_archive": image_archive(self._part_id, name),
            "image_path": self._local.get(name),
        }


class DiffusionDBPartSource(DiffusionDBJsonSource):
    """A downloaded DiffusionDB part: the extracted folder holding part-NNNNNN.json and its images,
    or the zip itself (images/part-NNNNNN.zip as published). Each generation gets its local image."""

    format = "diffusiondb-part"

    def __init__(self, path):
        self.path = str(path)
        root = Path(path)
        if root.is_dir():
            found = sorted(root.glob("part-*.json"))
            if len(found) != 1:
                raise InputError(path, f"a DiffusionDB part folder holds one part-NNNNNN.json; found {len(found)}")
            name, data, members = found[0].name, load_json(found[0]), [p.name for p in root.iterdir() if p.is_file()]
        else:
            name, data, members = _zip_part(root)
        self._items = _part_entries(path, data)
        self.num_rows = len(self._items)
        self._part_id = _part_id(name)
        by_name = {member.rsplit("/", 1)[-1]: member for member in members}  # a zip may hold them in a folder
        self._local = {n: by_name[n] for n, _ in self._items if isinstance(n, str) and n in by_name}
        self.image_root = str(root.resolve())


def is_part(path: Path) -> bool:
    """A folder or zip holding a DiffusionDB part-NNNNNN.json."""
    path = Path(path)
    if path.is_dir():
        return any(path.glob("part-*.json"))
    if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(_PART_IN_NAME.fullmatch(Path(member).stem) and member.endswith(".json") for member in archive.namelist())
    return False


def _zip_part(path: Path) -> tuple[str, object, list[str]]:
    """(JSON member name, its parsed content, the names of the other members) of a part zip."""
    import json

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as problem:
        raise InputError(path, f"not a readable zip file: {problem}") from None
    with archive:
        names = [info for info in archive.infolist() if not info.is_dir()]
        parts = [info for info in names if info.filename.endswith(".json") and _PART_IN_NAME.fullmatch(Path(info.filename).stem)]
        if len(parts) != 1:
            raise InputError(path, f"a DiffusionDB part zip holds one part-NNNNNN.json; found {len(parts)}")
        info = parts[0]
        if info.file_size > MAX_PART_JSON_BYTES:
            raise InputError(path, f"{info.filename} would be {info.file_size:,} bytes uncompressed; a part's JSON is far smaller")
        try:
            data = json.loads(archive.read(info))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as problem:
            raise InputError(path, f"{info.filename} is not valid JSON: {problem}") from None
        except (OSError, zipfile.BadZipFile) as problem:
            raise InputError(path, f"cannot read {info.filename}: {problem}") from None
        return info.filename, data, [i.filename for i in names if i is not info]


# --- CSV export ----------------------------------------------------------------------------------


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def float32_value(value, column: str) -> float | None:
    """DiffusionDB stores cfg and the NSFW scores as float32; its CSV export wrote some of them
    widened to float64 ("7.300000190734863"). Narrowing back to float32 and taking the shortest
    decimal gives the value as stored (7.3), the same the Parquet reader produces."""
    number = parse_float(value, column)
    if number is None or abs(number) > _FLOAT32_MAX:  # beyond float32 it cannot have been one
        return number
    return float(str(np.float32(number)))


class DiffusionDBCsvSource(CsvSource):
    """prompt,seed,step,cfg,sampler,width,height,user_name,timestamp,image_nsfw,prompt_nsfw
    (image_name and part_id are used when present)."""

    format = "diffusiondb-csv"

    def normalise(self, fields: dict) -> dict:
        sampler_original = optional_text(fields.get("sampler"))
        name = optional_text(fields.get("image_name"))
        part_id = parse_int(fields.get("part_id"), "part_id")
        return {
            "source_id": name,
            "prompt": check_prompt(fields.get("prompt")),
            "seed": parse_int(fields.get("seed"), "seed", maximum=UINT32_MAX),
            "steps": parse_int(fields.get("step"), "step"),
            "cfg": float32_value(fields.get("cfg"), "cfg"),
            "sampler": canonical_sampler(sampler_original),  # names ("k_lms") or codes ("8") both map
            "sampler_original": sampler_original,
            "width": parse_int(fields.get("width"), "width"),
            "height": parse_int(fields.get("height"), "height"),
            "image_archive": image_archive(part_id, name),
            "user_hash": optional_text(fields.get("user_name")),
            "created_at": iso_from_text(fields.get("timestamp"), "timestamp"),
            "image_nsfw": float32_value(fields.get("image_nsfw"), "image_nsfw"),
            "prompt_nsfw": float32_value(fields.get("prompt_nsfw"), "prompt_nsfw"),
        }
