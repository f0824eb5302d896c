"""LAION parquet, in its three published shapes, into TRAINING_IMAGE_SCHEMA batches.

- V1 (laion2B-en-aesthetic): URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe, pwatermark, aesthetic
  (+ LANGUAGE in the multi / nolang / laion-art variants);
- V2 (improved_aesthetics_6plus): the same with AESTHETIC_SCORE and a pandas __index_level_0__;
- URL+TEXT only (img2dataset-style, LAION-400M/5B subsets).

Whole batches are validated with pyarrow.compute; Python only sees the rejected rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spellbook.ingest.readers.parquet import batches_from
from spellbook.ingest.records import TRAINING_IMAGE_SCHEMA, InputError, ReadBatch, Rejection

MAX_CAPTION_CHARS = 10_000

# source column -> our column; the first source name present wins.
_COLUMNS = {
    "url": ["URL", "url"],
    "caption": ["TEXT", "caption", "text"],
    "width": ["WIDTH", "width"],
    "height": ["HEIGHT", "height"],
    "similarity": ["similarity"],
    "punsafe": ["punsafe"],
    "pwatermark": ["pwatermark"],
    "aesthetic_score": ["AESTHETIC_SCORE", "aesthetic"],
    "hash": ["hash"],
    "language": ["LANGUAGE", "language"],
}
_REQUIRED = ["url", "caption"]
_STRING_COLUMNS = {"url", "caption", "language"}


def parquet_files(path: Path) -> list[Path]:
    """A parquet file, or every *.parquet file in a folder (sorted, recursively)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise InputError(path, "folder holds no .parquet files")
        return files
    return [path]


def _is_number(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_decimal(data_type) or pa.types.is_null(data_type)


def _is_text(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_null(data_type)


class LaionSource:
    """One opened LAION parquet file."""

    def __init__(self, path: Path):
        self.path = str(path)
        try:
            self._file = pq.ParquetFile(path)
            schema = self._file.schema_arrow
        except (pa.ArrowException, OSError) as error:
            raise InputError(path, f"not a readable parquet file ({error})") from None
        self.num_rows = self._file.metadata.num_rows
        self.columns = list(schema.names)
        names = set(schema.names)
        self._source_columns = {}
        for column, candidates in _COLUMNS.items():
            found = next((name for name in candidates if name in names), None)
            if found is None:
                continue
            data_type = schema.field(found).type
            expected_ok = _is_text(data_type) if column in _STRING_COLUMNS else _is_number(data_type)
            if not expected_ok:
                expected = "text" if column in _STRING_COLUMNS else "a number"
                raise InputError(path, f"has type {data_type}, expected {expected}", column=found)
            self._source_columns[column] = found
        for column in _REQUIRED:
            if column not in self._source_columns:
                raise InputError(path, f"required column is missing (columns present: {', '.join(schema.names)})", column=_COLUMNS[column][0])
        if "AESTHETIC_SCORE" in names:
            self.format = "laion-aesthetics-v2"
        elif "aesthetic" in names:
            self.format = "laion-aesthetics-v1"
        else:
            self.format = "laion-url-text"
        metadata = schema.metadata or {}
        self.synthetic = metadata.get(b"spellbook_synthetic") == b"true"

    def batches(self, batch_size: int, skip_rows: int = 0, min_aesthetic: float | None = None) -> Iterator[ReadBatch]:
        first_row = skip_rows  # 0-based index of the next row in the file, for error messages
        columns = list(dict.fromkeys(self._source_columns.values()))
        try:
            for first_row, raw in batches_from(self._file, columns, batch_size, skip_rows):
                yield self._normalise(raw, first_row, min_aesthetic)
                first_row += raw.num_rows
        except (pa.ArrowException, OSError) as error:
            message = " ".join(str(error).split())
            raise InputError(self.path, f"cannot read past row {first_row} ({message})", row=first_row + 1) from None

    def _column(self, raw: pa.RecordBatch, column: str) -> pa.Array | None:
        name = self._source_columns.get(column)
        if name is None:
            return None
        values = raw.column(name)
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        return values

    def _normalise(self, raw: pa.RecordBatch, first_row: int, min_aesthetic: float | None) -> ReadBatch:
        n = raw.num_rows
        source_row = pa.array(range(first_row + 1, first_row + n + 1), pa.int64())
        url = self._text(raw, "url")
        caption = self._text(raw, "caption")
        language = self._text(raw, "language")

        # Each check yields a boolean mask; the first failing check names the row's reason.
        checks = [
            ("url", "missing URL", pc.or_kleene(pc.is_null(url), pc.equal(pc.utf8_length(url), 0))),
            ("url", "URL is not http(s)", pc.invert(pc.match_substring_regex(url, r"^[hH][tT][tT][pP][sS]?://[^\s/]"))),
            ("caption", "empty caption", pc.or_kleene(pc.is_null(caption), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(caption)), 0))),
            ("caption", f"caption longer than {MAX_CAPTION_CHARS:,} characters", pc.greater(pc.utf8_length(caption), MAX_CAPTION_CHARS)),
        ]
        bad_utf8 = self._invalid_utf8_rows(raw)
        rejected_mask = pa.array([False] * n) if not bad_utf8 else pa.array([i in bad_utf8 for i in range(n)])
        rejections = [Rejection(self.path, first_row + i + 1, column, "invalid UTF-8") for i, column in sorted(bad_utf8.items())]
        for column, reason, mask in checks:
            mask = pc.fill_null(mask, True)
            new = pc.and_(mask, pc.invert(rejected_mask))
            if pc.any(new).as_py():
                for i in pc.indices_nonzero(new).to_pylist():
                    rejections.append(Rejection(self.path, first_row + i + 1, self._source_columns[column], reason))
                rejected_mask = pc.or_(rejected_mask, new)

        score = self._number(raw, "aesthetic_score")
        keep = pc.invert(rejected_mask)
        filtered = 0
        if min_aesthetic is not None:
            # A row without a score cannot be shown to reach the threshold: it is filtered too.
            below = pc.fill_null(pc.less(score, min_aesthetic), True)
            filtered = pc.sum(pc.and_(below, keep)).as_py() or 0
            keep = pc.and_(keep, pc.invert(below))

        table = pa.RecordBatch.from_arrays(
            [
                source_row,
                url,
                caption,
                self._size(raw, "width"),
                self._size(raw, "height"),
                self._number(raw, "similarity"),
                self._number(raw, "punsafe"),
                self._number(raw, "pwatermark"),
                score,
                self._integer(raw, "hash"),
                language,
            ],
            schema=TRAINING_IMAGE_SCHEMA,
        )
        rejections.sort(key=lambda rejection: rejection.row)
        return ReadBatch(rows=table.filter(keep), rejected=rejections, rows_read=n, filtered=filtered)

    def _invalid_utf8_rows(self, raw: pa.RecordBatch) -> dict[int, str]:
        """Row index -> source column, for strings that are not valid UTF-8 (parquet does not check)."""
        bad = {}
        for column in ("url", "caption", "language"):
            values = self._column(raw, column)
            if values is None or pa.types.is_null(values.type):
                continue
            try:
                values.validate(full=True)
                continue
            except pa.ArrowInvalid:
                pass
            for i, value in enumerate(values.view(pa.binary()).to_pylist()):
                if value is None or i in bad:
                    continue
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    bad[i] = self._source_columns[column]
        return bad

    def _text(self, raw, column) -> pa.Array:
        values = self._column(raw, column)
        if values is None or pa.types.is_null(values.type):
            return pa.nulls(raw.num_rows, pa.string())
        values = values.cast(pa.string())
        # Invalid UTF-8 rows are rejected; blank them so later compute functions never see them.
        try:
            values.validate(full=True)
        except pa.ArrowInvalid:
            cleaned = []
            for value in values.view(pa.binary()).to_pylist():
                try:
                    cleaned.append(value.decode("utf-8") if value is not None else None)
                except UnicodeDecodeError:
                    cleaned.append(None)
            values = pa.array(cleaned, pa.string())
        return values

    def _number(self, raw, column) -> pa.Array:
        values = self._column(raw, column)
        if values is None:
            return pa.nulls(raw.num_rows, pa.float64())
        values = values.cast(pa.float64())
        # NaN and infinities mean "unknown": store NULL, never a number that is not one.
        return pc.if_else(pc.is_finite(values), values, pa.scalar(None, pa.float64()))

    def _size(self, raw, column) -> pa.Array:
        values = self._number(raw, column)
        valid = pc.and_(pc.greater(values, 0), pc.less(values, 1_000_000))
        return pc.if_else(valid, pc.round(values), pa.scalar(None, pa.float64())).cast(pa.int64())

    def _integer(self, raw, column) -> pa.Array:
        values = self._column(raw, column)
        if values is None:
            return pa.nulls(raw.num_rows, pa.int64())
        if pa.types.is_floating(values.type):
            values = pc.if_else(pc.is_finite(values), values, pa.scalar(None, values.type))
        try:
            return values.cast(pa.int64())
        except pa.ArrowInvalid:
            return pc.cast(values, pa.int64(), safe=False)


def open_laion(path: Path, min_aesthetic: float | None = None) -> LaionSource:
    """Open a LAION parquet file; with min_aesthetic, the file must have a score to filter by."""
    source = LaionSource(Path(path))
    if min_aesthetic is not None and "aesthetic_score" not in source._source_columns:
        raise InputError(
            path,
            f"--min-aesthetic {min_aesthetic:g} needs an aesthetic score, and this {source.format} file has none "
            f"(columns: {', '.join(source.columns)})",
            column=" or ".join(_COLUMNS["aesthetic_score"]),
        )
    return source
