"""What the row-by-row prompt readers share: the checks that turn one input value into a schema
value or a rejection, the CSV/JSON plumbing, and the loop that packs rows into Arrow batches.

Nothing here knows any one format; the registry of formats is the package's __init__.
"""
from __future__ import annotations

import csv
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from spellbook.ingest.records import GENERATION_SCHEMA, InputError, ReadBatch, Rejection

UINT32_MAX = 2**32 - 1  # Stable Diffusion v1 front ends (DiffusionDB, Lexica, Krea, I2P) draw uint32 seeds
INT64_MAX = 2**63 - 1  # what the seed column can hold; ComfyUI and Fooocus draw 64-bit seeds
MAX_PROMPT_CHARS = 10_000

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".avif", ".tif", ".tiff", ".gif", ".bmp"}

# Python's csv module refuses fields over 128 KiB by default; a 1 MB prompt must become a rejection
# ("prompt too long") for that row, not an error for the whole file.
_CSV_FIELD_LIMIT = 2**31 - 1


# --- row checks ----------------------------------------------------------------------------------


class RowRejected(Exception):
    """Raised by a row normaliser: this row is skipped, for this reason. `path` overrides the file
    named in the rejection (the image reader names the image, not the folder)."""

    def __init__(self, column: str | None, reason: str, path: str | None = None):
        super().__init__(reason)
        self.column = column
        self.reason = reason
        self.path = path


def show(value, limit: int = 60) -> str:
    """A value as it appears in a rejection reason, cut short so a 1 MB cell stays readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_prompt(value, column: str = "prompt") -> str:
    """The prompt exactly as written (trailing spaces included), or a rejection."""
    if value is None:
        raise RowRejected(column, "prompt is missing")
    if not isinstance(value, str):
        raise RowRejected(column, f"prompt is not text: {show(value)}")
    if not value.strip():
        raise RowRejected(column, "prompt is empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise RowRejected(column, f"prompt is {len(value):,} characters long; the limit is {MAX_PROMPT_CHARS:,}")
    return value


_INTEGER_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")  # "50.0" too: pandas writes integer columns with gaps that way


def parse_int(value, column: str, *, minimum: int = 0, maximum: int = INT64_MAX) -> int | None:
    """An integer within minimum..maximum; None when missing ("" or null); else a rejection."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = None
    if isinstance(value, bool):
        number = None  # JSON true/false is not a number, although Python says bool is an int
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        try:
            number = int(value.strip().split(".")[0])
        except ValueError:  # more digits than Python will convert
            number = None
    if number is None:
        raise RowRejected(column, f"{column} is not an integer: {show(value)}")
    if not minimum <= number <= maximum:
        raise RowRejected(column, f"{column} {number} is outside {minimum}..{maximum}")
    return number


def parse_float(value, column: str) -> float | None:
    """A finite number; None when missing; else a rejection. Never clamped (cfg 500 is real)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise RowRejected(column, f"{column} is not a number: {show(value)}")
    return number


def parse_bool(value, column: str) -> bool | None:
    """true/false, 1/0 (Krea's is_grid), "true"/"false"; None when missing; else a rejection."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise RowRejected(column, f"{column} is not true/false: {show(value)}")


def optional_text(value) -> str | None:
    """Text as written, None for missing or "" (an empty model name is no model name)."""
    if value is None or isinstance(value, (dict, list)):
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text != "" else None


def http_url(value) -> str | None:
    """Only http(s) URLs become links on the pages; "PENDING", "javascript:..." and the like do not."""
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return value
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_from_text(value, column: str) -> str | None:
    """"2022-08-14 00:45:00+00:00" -> "2022-08-14T00:45:00Z"; a time without zone is taken as UTC."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        moment = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise RowRejected(column, f"{column} is not a date and time: {show(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return _iso(moment)


def iso_from_unix(value, column: str) -> str | None:
    """Unix seconds (Krea writes some as floats) -> ISO 8601 UTC, whole seconds."""
    seconds = parse_float(value, column)
    if seconds is None:
        return None
    try:
        return _iso(datetime.fromtimestamp(math.floor(seconds), tz=timezone.utc))
    except (OverflowError, OSError, ValueError):
        raise RowRejected(column, f"{column} is not a plausible Unix time: {show(value)}") from None


# --- rows to batches -----------------------------------------------------------------------------


def _check_strings(row: dict) -> None:
    """Arrow cannot store lone surrogates (from invalid UTF-8 read leniently, or "\\ud800" in JSON)."""
    for column, value in row.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RowRejected(column, f"{column} is not valid UTF-8 text") from None


def _pack(rows: list[dict], rejected: list[Rejection], read: int) -> ReadBatch:
    batch = pa.RecordBatch.from_pylist(rows, schema=GENERATION_SCHEMA)
    return ReadBatch(rows=batch, rejected=rejected, rows_read=read)


def batches_from_records(
    path: str,
    records: Iterable[tuple[int, object]],
    normalise: Callable[[object], dict],
    batch_size: int,
    skip_rows: int = 0,
) -> Iterator[ReadBatch]:
    """Run `normalise` over numbered records and pack the results into ReadBatches.

    `records` yields (1-based source row, raw record); a RowRejected in place of the raw record
    means the record could not even be decoded. `normalise` returns the schema columns it knows
    (the rest stay NULL) or raises RowRejected. The first `skip_rows` records are passed over
    without being normalised, which is how a load resumes.
    """
    batch_size = max(1, int(batch_size))
    rows: list[dict] = []
    rejected: list[Rejection] = []
    read = 0
    for source_row, raw in records:
        if source_row <= skip_rows:
            continue
        read += 1
        try:
            if isinstance(raw, RowRejected):
                raise raw
            row = normalise(raw)
            _check_strings(row)
        except RowRejected as problem:
            rejected.append(Rejection(problem.path or path, source_row, problem.column, problem.reason))
        else:
            row["source_row"] = source_row
            rows.append(row)
        if read >= batch_size:
            yield _pack(rows, rejected, read)
            rows, rejected, read = [], [], 0
    if read:
        yield _pack(rows, rejected, read)


# --- CSV -----------------------------------------------------------------------------------------


def _open_csv(path):
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    # surrogateescape keeps undecodable bytes in the text so that one bad row can be reported and
    # skipped instead of the whole file failing at the first invalid byte.
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _bad_utf8(text: str) -> bytes | None:
    """The undecodable bytes hidden in a surrogateescape'd string, or None if it was valid UTF-8."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as problem:
        return text[problem.start : problem.end].encode("utf-8", "surrogateescape")


def read_csv_header(path) -> list[str]:
    """The header row, or InputError when the file is not readable as a CSV with a header."""
    try:
        with _open_csv(path) as handle:
            header = next(csv.reader(handle), None)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, csv.Error) as problem:
        raise InputError(path, f"cannot read as CSV: {problem}", row=0) from None
    if not header:
        raise InputError(path, "empty file: expected a CSV header row", row=0)
    if any(_bad_utf8(name) for name in header):
        raise InputError(path, "the header row is not UTF-8 text; is this really a CSV file?", row=0)
    return header


def iter_csv_records(path) -> Iterator[tuple[int, dict | RowRejected]]:
    """(data row number, {column: text}) per CSV record; header excluded, blank lines skipped.

    Row numbers count records, not lines: a quoted prompt spanning three lines is one row.
    """
    with _open_csv(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None) or []
        number = 0
        try:
            for fields in reader:
                if not fields:
                    continue
                number += 1
                if _bad_utf8("".join(fields)) is not None:
                    yield number, _utf8_rejection(header, fields)
                    continue
                yield number, dict(zip(header, fields))
        except csv.Error as problem:
            raise InputError(path, f"not valid CSV: {problem}", row=number + 1) from None


def _utf8_rejection(header: list[str], fields: list[str]) -> RowRejected:
    for index, text in enumerate(fields):
        bad = _bad_utf8(text)
        if bad is not None:
            column = header[index] if index < len(header) else f"field {index + 1}"
            return RowRejected(column, f"invalid UTF-8 bytes {bad[:8]!r} in {column}")
    return RowRejected(None, "invalid UTF-8")


class CsvSource:
    """Base for the CSV prompt formats: checks the header once, then normalises record by record."""

    format = "csv"
    required_columns: tuple[str, ...] = ("prompt",)

    def __init__(self, path):
        self.path = str(path)
        self.num_rows = None  # unknown without parsing the whole file (quoted fields span lines)
        self.columns = read_csv_header(path)
        for column in self.required_columns:
            if column not in self.columns:
                raise InputError(
                    path,
                    f"missing required column {column!r} for {self.format}; found columns: {', '.join(self.columns)}",
                    column=column,
                )

    def batches(self, batch_size: int, skip_rows: int = 0) -> Iterator[ReadBatch]:
        return batches_from_records(self.path, iter_csv_records(self.path), self.normalise, batch_size, skip_rows)

    def normalise(self, fields: dict) -> dict:
        raise NotImplementedError


# --- JSON ----------------------------------------------------------------------------------------


def load_json(path):
    """The parsed file, or InputError saying why it is not JSON."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except OSError as problem:
        raise InputError(path, f"cannot read: {problem}") from None
    try:
        return json.loads(data)
    except json.JSONDecodeError as problem:
        raise InputError(path, f"not valid JSON: {problem.msg} (line {problem.lineno}, column {problem.colno})") from None
    except UnicodeDecodeError as problem:
        raise InputError(path, f"not UTF-8 text (byte {problem.start}); JSON must be UTF-8") from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply to be a prompt file") from None
