"""The normalised records that readers produce and the loader writes.

Readers turn each source format into Arrow record batches with exactly these columns (so that
12M rows never become 12M Python objects), plus the rows they rejected and why. They never touch
SQLite; `spellbook.ingest.load` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import pyarrow as pa

# One row per scraped image in a training set (LAION-Aesthetics and friends).
TRAINING_IMAGE_SCHEMA = pa.schema(
    [
        ("source_row", pa.int64()),  # 1-based row number in the source file, for error messages
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("similarity", pa.float64()),
        ("punsafe", pa.float64()),
        ("pwatermark", pa.float64()),
        ("aesthetic_score", pa.float64()),
        ("hash", pa.int64()),  # LAION's own hash column (signed int64), not our id
        ("language", pa.string()),
    ]
)

# One row per generated image (or prompt) in a prompt corpus.
GENERATION_SCHEMA = pa.schema(
    [
        ("source_row", pa.int64()),  # 1-based row/record number in the source file
        ("source_id", pa.string()),  # the corpus's own id (image name, Lexica id...), or None
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),  # full uint32 range, so int64
        ("steps", pa.int64()),
        ("cfg", pa.float64()),  # never clamped: 255 and 500 are real values
        ("sampler", pa.string()),  # canonical name, see spellbook.text.samplers
        ("sampler_original", pa.string()),  # as the source wrote it ("8", "k_lms", "Euler a")
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("model", pa.string()),
        ("image_url", pa.string()),  # only a URL that serves this one image
        ("image_path", pa.string()),  # relative to the Source's image_root (never absolute)
        ("user_hash", pa.string()),
        ("created_at", pa.string()),  # ISO 8601 UTC, "2022-08-14T00:45:00Z"
        ("image_nsfw", pa.float64()),
        ("prompt_nsfw", pa.float64()),
        ("is_grid", pa.bool_()),
        ("image_archive", pa.string()),  # where the corpus publishes the image when no URL does ("images/part-000001.zip")
        ("model_hash", pa.string()),  # the checkpoint's hash as the tool recorded it
        ("generator", pa.string()),  # the tool that wrote the image: AUTOMATIC1111, ComfyUI, ...
        ("extra", pa.string()),  # JSON object: the other settings the tool recorded, under its own names
    ]
)


class InputError(Exception):
    """Input that cannot be read at all: names the file, and the row and column where there is one."""

    def __init__(self, path, message, row=None, column=None):
        self.path = str(path)
        self.row = row
        self.column = column
        self.message = message
        super().__init__(str(self))

    def __reduce__(self):  # errors travel from the reader process to the writer
        return (type(self), (self.path, self.message, self.row, self.column))

    def __str__(self):
        where = self.path
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column {self.column}"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Rejection:
    """One input row that was skipped, and why."""

    path: str
    row: int
    column: str | None
    reason: str

    def __str__(self):
        column = f", column {self.column}" if self.column else ""
        return f"{self.path}, row {self.row}{column}: {self.reason}"


@dataclass
class ReadBatch:
    """What a reader yields: accepted rows (in the target schema) and rejected ones."""

    rows: pa.RecordBatch
    rejected: list[Rejection] = field(default_factory=list)
    rows_read: int = 0  # accepted + rejected + filtered: how far into the file this batch reaches
    filtered: int = 0  # rows dropped on purpose (for example under --min-aesthetic), not errors


class Source(Protocol):
    """An opened input file. `batches(skip_rows=n)` resumes after the first n rows.

    A Source of image files may also say `image_root`: the folder (or zip) its rows' image_path
    values are relative to."""

    path: str
    format: str  # "laion-aesthetics-v2", "diffusiondb-parquet", "lexica-json", ...
    num_rows: int | None

    def batches(self, batch_size: int, skip_rows: int = 0) -> Iterator[ReadBatch]: ...
