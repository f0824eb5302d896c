"""A folder of generated images (or one image) as a prompt corpus: one row per image file, its
settings read from the metadata the generating tool embedded (spellbook.ingest.readers.image_metadata).

An image is identified by its content (sha256): the same file in two folders is one generation, and
two images with one name (ComfyUI restarts ComfyUI_00001_.png in every folder) are two. Its path is
kept relative to the folder that was ingested (the Source's image_root), never as an absolute path.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

from spellbook.ingest.readers.common import RowRejected, batches_from_records
from spellbook.ingest.readers.image_metadata import read_image_metadata
from spellbook.ingest.records import InputError, ReadBatch


def _image_files(root: Path) -> list[Path]:
    """Every file under the folder, sorted; hidden files and folders (.DS_Store, .git) are skipped."""
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def content_id(path: Path) -> str:
    """An image's identity: the sha256 of its bytes (read in blocks: a file may be large)."""
    with open(path, "rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def with_settings(row: dict) -> dict:
    """The reader's settings as columns: `extra` (a dict of everything else the tool recorded) as JSON."""
    extra = row.get("extra")
    row["extra"] = json.dumps(extra, ensure_ascii=False, sort_keys=True, default=str) if extra else None
    return row


class ImageMetadataSource:
    """A folder of images (searched recursively) or one image file; one row per file."""

    format = "image-metadata"

    def __init__(self, path):
        self.path = str(path)
        root = Path(path)
        if not root.exists():
            raise InputError(path, "no such file or folder")
        self._root = root if root.is_dir() else root.parent
        self.image_root = str(self._root.resolve())
        self._files = _image_files(root) if root.is_dir() else [root]
        self.num_rows = len(self._files)

    def batches(self, batch_size: int, skip_rows: int = 0) -> Iterator[ReadBatch]:
        records = enumerate(self._files, start=1)
        return batches_from_records(self.path, records, self._normalise, batch_size, skip_rows)

    def _normalise(self, file: Path) -> dict:
        try:
            row = read_image_metadata(file)
        except RowRejected as problem:
            raise RowRejected(problem.column, problem.reason, path=str(file)) from None
        row["source_id"] = content_id(file)
        row["image_path"] = file.relative_to(self._root).as_posix()
        return with_settings(row)
