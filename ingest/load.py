"""Writing readers' batches into the database: stable ids, domains, FTS, provenance, resumability.

Each batch is one transaction that also records how far into its file the ingest got, so a
`kill -9` at any moment leaves a consistent database and re-running resumes after the last
committed batch. A forked reader process turns Arrow batches into keys and plain lists while the
writer inserts the previous batch; the FTS index and domain counts are then filled by set
operations inside SQLite.
"""
from __future__ import annotations

import fcntl
import itertools
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spellbook.database import schema
from spellbook.database.connect import connect, transaction
from spellbook.ingest.domains import registered_domains
from spellbook.ingest.keys import file_sha256, stable_key, stable_keys
from spellbook.ingest.records import InputError, Rejection

_SHOWN_REJECTIONS = 20
KEEP_INDEXES_BELOW = 10  # keep the deferred indexes when a load adds less than a tenth of the table


class KnownKeys:
    """The stable keys already in a table, as one sorted int64 array (96 MB at 12M rows), and
    optionally the row id of each (another 8 bytes a key).

    Deduplicating here instead of through the unique index makes the bulk load about twice as fast:
    inserting random 63-bit keys into a B-tree costs more than writing the row itself.
    """

    def __init__(self, conn, table: str, with_ids: bool = False):
        columns = "key, id" if with_ids else "key"
        flat = np.fromiter(itertools.chain.from_iterable(conn.execute(f"SELECT {columns} FROM {table}")), dtype=np.int64)
        pairs = flat.reshape(-1, 2) if with_ids else flat.reshape(-1, 1)
        order = np.argsort(pairs[:, 0], kind="stable")
        self.keys = pairs[order, 0].copy()
        self.ids = pairs[order, 1].copy() if with_ids else None

    def _positions(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        present = np.zeros(len(batch), dtype=bool)
        positions = np.zeros(len(batch), dtype=np.int64)
        if len(self.keys):
            positions = np.minimum(np.searchsorted(self.keys, batch), len(self.keys) - 1)
            present = self.keys[positions] == batch
        return positions, present

    def new(self, keys: list[int]) -> np.ndarray:
        """Mask of the keys to insert: not in the table, and first of their kind in this batch."""
        batch = np.asarray(keys, dtype=np.int64)
        _, present = self._positions(batch)
        first = np.zeros(len(batch), dtype=bool)
        first[np.unique(batch, return_index=True)[1]] = True
        return first & ~present

    def ids_of(self, keys: list[int]) -> np.ndarray:
        """The row id of each key already in the table, -1 for the others."""
        batch = np.asarray(keys, dtype=np.int64)
        positions, present = self._positions(batch)
        return np.where(present, self.ids[positions] if len(self.keys) else -1, -1)

    def add(self, keys: np.ndarray, ids: np.ndarray | None = None) -> None:
        order = np.argsort(keys, kind="stable")
        keys = np.asarray(keys, dtype=np.int64)[order]
        at = np.searchsorted(self.keys, keys)
        self.keys = np.insert(self.keys, at, keys)
        if self.ids is not None:
            self.ids = np.insert(self.ids, at, np.asarray(ids, dtype=np.int64)[order])


class _IngestLock:
    """One ingest at a time per database: dedupe in memory is only sound with a single writer.

    A POSIX record lock (lockf), not flock: it belongs to this process alone, so the forked reader
    does not inherit it, and a kill -9 of the writer frees it at once for the rerun.
    """

    def __init__(self, db_path: Path):
        self.path = Path(f"{db_path}.ingest-lock")

    def __enter__(self):
        self.handle = open(self.path, "a")
        try:
            fcntl.lockf(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise InputError(self.path.with_suffix(""), "another `spellbook ingest` is writing to this database; try again when it has finished") from None
        return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        fcntl.lockf(self.handle, fcntl.LOCK_UN)
        self.handle.close()


@dataclass
class FileSummary:
    path: str
    format: str = "?"
    rows_read: int = 0
    inserted: int = 0
    already_present: int = 0
    filtered: int = 0
    rejected: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    rejections: list[Rejection] = field(default_factory=list)  # the first few, to show
    note: str = ""
    error: str | None = None

    def add(self, batch, inserted: int):
        accepted = batch.accepted
        self.rows_read += batch.rows_read
        self.inserted += inserted
        self.already_present += accepted - inserted
        self.filtered += batch.filtered
        self.rejected += len(batch.rejected)
        for rejection in batch.rejected:
            self.rejected_by_reason[f"{rejection.column or '-'}: {rejection.reason}"] += 1
            if len(self.rejections) < _SHOWN_REJECTIONS:
                self.rejections.append(rejection)


@dataclass
class Summary:
    files: list[FileSummary] = field(default_factory=list)
    seconds: float = 0.0
    artists: int = 0  # artists whose counts were refreshed after the ingest
    artist_seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(f.error for f in self.files)

    def total(self, attribute: str) -> int:
        return sum(getattr(f, attribute) for f in self.files)

    def report(self) -> str:
        lines = []
        for f in self.files:
            if f.error:
                lines.append(f"ERROR {f.error}")
                continue
            note = f" ({f.note})" if f.note else ""
            lines.append(
                f"{f.path} [{f.format}]{note}: read {f.rows_read:,}, inserted {f.inserted:,}, "
                f"already present {f.already_present:,}, filtered {f.filtered:,}, rejected {f.rejected:,}"
            )
            for reason, count in f.rejected_by_reason.most_common():
                lines.append(f"    rejected {count:,} x {reason}")
            for rejection in f.rejections:
                lines.append(f"    e.g. {rejection}")
        rate = self.total("rows_read") / self.seconds if self.seconds else 0
        lines.append(
            f"total: read {self.total('rows_read'):,}, inserted {self.total('inserted'):,}, "
            f"already present {self.total('already_present'):,}, filtered {self.total('filtered'):,}, "
            f"rejected {self.total('rejected'):,} in {self.seconds:.1f}s ({rate:,.0f} rows/s)"
        )
        if self.artists:
            lines.append(f"artist counts refreshed for {self.artists:,} artists in {self.artist_seconds:.1f}s")
        if self.failed:
            lines.append(f"{sum(1 for f in self.files if f.error)} file(s) failed; rows committed before the error are kept, re-run to resume")
        return "\n".join(lines)


class _NamedIds:
    """Ids of rows named by one unique text column (domains, keywords), created on first sight.

    The cache may hold ids inserted by a batch that is then rolled back: forget() after a rollback.
    """

    def __init__(self, conn, table: str, column: str):
        self.conn = conn
        self.cache: dict[str, int] = {}
        self._insert = f"INSERT OR IGNORE INTO {table}({column}{{extra}}) VALUES (?{{marks}})"
        self._select = f"SELECT id FROM {table} WHERE {column} = ?"

    def id(self, name: str, **extra) -> int:
        found = self.cache.get(name)
        if found is None:
            sql = self._insert.format(extra="".join(", " + k for k in extra), marks=", ?" * len(extra))
            self.conn.execute(sql, (name, *extra.values()))
            found = self.cache[name] = self.conn.execute(self._select, (name,)).fetchone()[0]
        return found

    def forget(self):
        self.cache.clear()


class _KeywordIds(_NamedIds):
    """Keyword ids, and each keyword's kind decided the same whatever order the corpora come in: a
    vocabulary artist is an artist from its first use (the extractor says so), and any other text
    becomes an artist once some prompt names it as one ("by X"), never back."""

    def __init__(self, conn):
        super().__init__(conn, "keywords", "keyword")
        self.kinds: dict[str, str] = {}

    def id(self, name: str, kind: str) -> int:
        found = self.cache.get(name)
        if found is None:
            self.conn.execute(
                "INSERT INTO keywords(keyword, kind) VALUES (?, ?) ON CONFLICT(keyword) DO UPDATE SET kind = 'artist' WHERE excluded.kind = 'artist'",
                (name, kind),
            )
            found, stored = self.conn.execute("SELECT id, kind FROM keywords WHERE keyword = ?", (name,)).fetchone()
            self.cache[name], self.kinds[name] = found, stored
        elif kind == "artist" and self.kinds.get(name) != "artist":
            self.conn.execute("UPDATE keywords SET kind = 'artist' WHERE id = ?", (found,))
            self.kinds[name] = "artist"
        return found

    def forget(self):
        super().forget()
        self.kinds.clear()


_TRAINING_VALUES = ["width", "height", "similarity", "punsafe", "pwatermark", "aesthetic_score", "hash", "language"]


class _TrainingTarget:
    """How training-image batches become rows of training_images."""

    kind = "training"
    item = "training_image"
    table = schema.TRAINING_TABLE
    fts = schema.TRAINING_FTS
    vocab = schema.TRAINING_FTS_VOCAB
    text_column = "caption"
    columns = schema.TRAINING_COLUMNS
    needs_ids = False

    def __init__(self, conn):
        self.conn = conn
        self.domains = _NamedIds(conn, "domains", "domain")

    def prepare(self, batch: pa.RecordBatch) -> dict:
        """The Python-side work for a batch (keys, plain lists), done on the reader thread."""
        urls = batch.column("url").to_pylist()
        captions = batch.column("caption").to_pylist()
        domains = registered_domains(batch.column("url"))
        columns = {name: batch.column(name).to_pylist() for name in _TRAINING_VALUES}
        return {"keys": stable_keys(urls, captions), "url": urls, "caption": captions, "domains": domains, **columns}

    def rows(self, prepared: dict, dataset_id: int) -> Iterable[tuple]:
        domains = prepared["domains"]
        ids_of_domains = pa.array([d and self.domains.id(d) for d in domains.dictionary.to_pylist()], pa.int64())
        domain_ids = pc.take(ids_of_domains, domains.indices).to_pylist()
        return zip(
            prepared["keys"],
            prepared["url"],
            prepared["caption"],
            *(prepared[name] for name in _TRAINING_VALUES),
            domain_ids,
            [dataset_id] * len(domain_ids),
        )

    def start(self, source):
        pass

    def forget_uncommitted(self):
        self.domains.forget()

    def update_present(self, present_ids, prepared: dict):
        pass

    def after_insert(self, last_id: int, prepared: dict):
        """Count the new rows (ids above last_id) per domain."""
        self.conn.execute(
            f"""
            UPDATE domains SET image_count = image_count + new.n
            FROM (SELECT domain_id, count(*) AS n FROM {self.table} WHERE id > ? GROUP BY domain_id) AS new
            WHERE domains.id = new.domain_id
            """,
            (last_id,),
        )


# Reader format -> corpus name stored in generations.source.
CORPORA = {
    "diffusiondb-parquet": "diffusiondb",
    "diffusiondb-json": "diffusiondb",
    "diffusiondb-part": "diffusiondb",
    "diffusiondb-csv": "diffusiondb",
    "lexica-json": "lexica",
    "krea-csv": "krea",
    "i2p-csv": "i2p",
    "image-metadata": "image-metadata",
}
# Columns that identify a generation when its corpus gives it no id of its own: everything that
# makes it a distinct image, the image itself included (Krea's cells of one Discord grid share
# prompt, seed and time and differ only in their image URL). The sampler is the canonical one, so
# that DiffusionDB's parquet (code 8) and its CSV export (k_lms) give the same rows.
_IDENTITY = ["prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "width", "height", "model", "user_hash", "created_at", "image_url"]
_GENERATION_VALUES = [c for c in schema.GENERATION_COLUMNS if c not in ("key", "source", "image_root_id", "dataset_id")]


class _GenerationTarget:
    """How prompt-corpus batches become generations, their keywords and per-day counts."""

    kind = "prompts"
    item = "generation"
    table = schema.GENERATIONS_TABLE
    fts = schema.GENERATIONS_FTS
    vocab = schema.GENERATIONS_FTS_VOCAB
    text_column = "prompt"
    columns = schema.GENERATION_COLUMNS
    needs_ids = True  # a part of images read after its metadata gives rows already present their image

    def __init__(self, conn):
        self.conn = conn
        self.corpus = None
        self.image_root_id = None
        self.keywords = _KeywordIds(conn)
        self.roots = _NamedIds(conn, "image_roots", "path")

    def start(self, source):
        self.corpus = CORPORA.get(source.format, source.format)
        root = getattr(source, "image_root", None)
        self.image_root_id = self.roots.id(str(root)) if root else None

    def prepare(self, batch: pa.RecordBatch) -> dict:
        from spellbook.text.keywords import extract_many

        values = {name: batch.column(name).to_pylist() for name in _GENERATION_VALUES}
        keys = []
        for i, source_id in enumerate(values["source_id"]):
            if source_id:
                keys.append(stable_key(self.corpus, source_id))
            else:
                keys.append(stable_key(self.corpus, *("" if values[c][i] is None else str(values[c][i]) for c in _IDENTITY)))
        # Plain strings cross to the writer process far cheaper than Keyword objects. A text that
        # comes out as an artist anywhere in the batch is an artist (see _KeywordIds).
        keywords = extract_many(values["prompt"])
        kinds: dict[str, str] = {}
        for row in keywords:
            for keyword in row:
                if kinds.get(keyword.text) != "artist":
                    kinds[keyword.text] = keyword.kind
        texts = [tuple(keyword.text for keyword in row) for row in keywords]
        return {"keys": keys, "keywords": texts, "kinds": kinds, **values}

    def rows(self, prepared: dict, dataset_id: int) -> Iterable[tuple]:
        n = len(prepared["keys"])
        roots = [self.image_root_id if path is not None else None for path in prepared["image_path"]]
        return zip(
            prepared["keys"],
            [self.corpus] * n,
            *(prepared[name] for name in _GENERATION_VALUES),
            roots,
            [dataset_id] * n,
        )

    def forget_uncommitted(self):
        self.keywords.forget()
        self.roots.forget()

    def update_present(self, present_ids, prepared: dict):
        """Rows already present that had no local image get this batch's (a DiffusionDB part
        downloaded after its metadata was ingested)."""
        if self.image_root_id is None:
            return
        updates = [
            (path, self.image_root_id, int(generation_id))
            for generation_id, path in zip(present_ids.tolist(), prepared["image_path"])
            if generation_id >= 0 and path is not None
        ]
        self.conn.executemany(
            f"UPDATE {self.table} SET image_path = ?, image_root_id = ? WHERE id = ? AND image_path IS NULL", updates
        )

    def after_insert(self, last_id: int, prepared: dict):
        """Link the new generations (ids above last_id) to their keywords; count per keyword and day.

        The counts are summed here from the batch in hand rather than by GROUP BY over the link
        table, and links are inserted in key order: both halve the cost of a prompt batch.
        """
        conn = self.conn
        new_ids = dict(conn.execute(f"SELECT key, id FROM {self.table} WHERE id > ?", (last_id,)))
        kinds = prepared["kinds"]
        links, link_days, prompt_days = [], [], Counter()
        for key, keywords, created_at in zip(prepared["keys"], prepared["keywords"], prepared["created_at"]):
            generation_id = new_ids.pop(key, None)  # pop: a key repeated in the batch was inserted once
            if generation_id is None:
                continue
            day = created_at[:10] if created_at else None
            prompt_days[day] += 1
            # A set: the same text can come back as artist and as modifier, and it is one keyword row.
            keyword_ids = sorted({self.keywords.id(text, kinds[text]) for text in keywords})
            links.extend((generation_id, keyword_id) for keyword_id in keyword_ids)
            link_days.extend((keyword_id, day) for keyword_id in keyword_ids)
        uses = Counter(keyword_id for keyword_id, _ in link_days)
        keyword_days = Counter(link_days)
        prompt_days.pop(None, None)
        keyword_days = {pair: n for pair, n in keyword_days.items() if pair[1] is not None}
        conn.executemany("INSERT INTO generation_keywords(generation_id, keyword_id) VALUES (?, ?)", links)
        conn.executemany("UPDATE keywords SET prompt_count = prompt_count + ? WHERE id = ?", [(n, k) for k, n in uses.items()])
        conn.executemany(
            """INSERT INTO keyword_days(keyword_id, day, count) VALUES (?, ?, ?)
               ON CONFLICT(keyword_id, day) DO UPDATE SET count = count + excluded.count""",
            [(k, day, n) for (k, day), n in sorted(keyword_days.items())],
        )
        conn.executemany(
            "INSERT INTO prompt_days(day, count) VALUES (?, ?) ON CONFLICT(day) DO UPDATE SET count = count + excluded.count",
            sorted(prompt_days.items()),
        )


def _register_dataset(conn, path: Path, source, target, sha256: str, options: str) -> tuple[int, str, int]:
    """The datasets row for this file: (id, status, rows already committed)."""
    row = conn.execute("SELECT id, status, rows_read, schema_version FROM datasets WHERE sha256 = ?", (sha256,)).fetchone()
    version = source.format + (f" {options}" if options else "")
    if row is not None and row[3] == version:
        return row[0], row[1], row[2]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with transaction(conn):
        if row is not None:  # same file, other options (e.g. --min-aesthetic): read it again
            # Read from the start: every counter starts again, or they would add up run after run.
            conn.execute(
                """UPDATE datasets SET schema_version = ?, status = 'loading', rows_read = 0, inserted = 0, already_present = 0,
                   rejected = 0, filtered = 0, ingested_at = ? WHERE id = ?""",
                (version, now, row[0]),
            )
            dataset_id = row[0]
        else:
            dataset_id = conn.execute(
                """INSERT INTO datasets(file_name, sha256, kind, schema_version, synthetic, row_count, status, ingested_at)
                   VALUES (?, ?, ?, ?, ?, ?, 'loading', ?)""",
                (path.name, sha256, target.kind, version, int(getattr(source, "synthetic", False)), source.num_rows, now),
            ).lastrowid
    return dataset_id, "loading", 0


def _write_batch(conn, target, known: KnownKeys, batch: "PreparedBatch", dataset_id: int, summary: FileSummary, sql) -> None:
    """One transaction: the batch's new rows, their FTS entries and counts, and the file's progress.

    Rows whose key is known (or repeated inside the batch) are skipped; new rows get the ids after
    the previous maximum, so "id > last_id" is exactly this batch's new rows.
    """
    new_keys = None
    try:
        with transaction(conn):
            inserted = 0
            if batch.accepted:
                new = known.new(batch.data["keys"])
                new_keys = np.asarray(batch.data["keys"], dtype=np.int64)[new]
                present_ids = known.ids_of(batch.data["keys"]) if known.ids is not None else None
                last_id = conn.execute(f"SELECT coalesce(max(id), 0) FROM {target.table}").fetchone()[0]
                if len(new_keys):
                    conn.executemany(sql["insert"], itertools.compress(target.rows(batch.data, dataset_id), new))
                    inserted = len(new_keys)
                    conn.execute(sql["fts"], (last_id,))
                    target.after_insert(last_id, batch.data)
                if present_ids is not None:
                    target.update_present(present_ids, batch.data)
            summary.add(batch, inserted)
            conn.execute(
                """UPDATE datasets SET rows_read = rows_read + ?, inserted = inserted + ?, already_present = already_present + ?,
                   rejected = rejected + ?, filtered = filtered + ? WHERE id = ?""",
                (batch.rows_read, inserted, batch.accepted - inserted, len(batch.rejected), batch.filtered, dataset_id),
            )
    except BaseException:
        target.forget_uncommitted()
        raise
    if new_keys is not None:
        # New rows took the ids after the previous maximum, in batch order.
        known.add(new_keys, np.arange(last_id + 1, last_id + 1 + len(new_keys)) if known.ids is not None else None)


@dataclass
class PreparedBatch:
    """A batch as the writer needs it: counts, rejections, and the rows as plain Python lists."""

    rows_read: int
    accepted: int
    filtered: int
    rejected: list[Rejection]
    data: dict | None


def _prepare(source, target, batch_size: int, skip_rows: int, read_options: dict) -> Iterator[PreparedBatch]:
    for batch in source.batches(batch_size, skip_rows=skip_rows, **read_options):
        accepted = batch.rows.num_rows
        yield PreparedBatch(batch.rows_read, accepted, batch.filtered, batch.rejected, target.prepare(batch.rows) if accepted else None)


def _reader_process(source, target, batch_size, skip_rows, read_options, queue, parent_pid):
    """Runs in a forked child: read and prepare, hand over through the queue, stop if the parent dies."""
    import os
    import queue as queues

    def hand_over(item):
        while True:
            try:
                queue.put(item, timeout=1)
                return
            except queues.Full:
                if os.getppid() != parent_pid:  # the writer was killed: nobody will read this
                    os._exit(1)

    try:
        for prepared in _prepare(source, target, batch_size, skip_rows, read_options):
            hand_over(prepared)
        hand_over(None)
    except BaseException as error:  # InputError and friends are re-raised by the writer
        hand_over(error)


def _prepared_batches(source, target, batch_size: int, skip_rows: int, read_options: dict) -> Iterator[PreparedBatch]:
    """Read and prepare batches in a second process, so parsing, hashing and keyword extraction
    use the second core while this one writes (threads would share one core through the GIL)."""
    import multiprocessing
    import os

    context = multiprocessing.get_context("fork")
    queue = context.Queue(maxsize=3)
    reader = context.Process(
        target=_reader_process, args=(source, target, batch_size, skip_rows, read_options, queue, os.getpid()), daemon=True
    )
    reader.start()
    try:
        while True:
            item = queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if reader.is_alive():
            reader.terminate()
        reader.join()
        queue.close()


def _ingest_source(conn, source, target, known: KnownKeys, batch_size: int, progress: bool, options: str = "", **read_options) -> FileSummary:
    path = Path(source.path)
    summary = FileSummary(path=str(path), format=source.format)
    sha256 = file_sha256(path)
    dataset_id, status, done = _register_dataset(conn, path, source, target, sha256, options)
    if status == "complete":
        row = conn.execute("SELECT rows_read, inserted + already_present, filtered, rejected FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        summary.rows_read, summary.already_present, summary.filtered, summary.rejected = row
        summary.note = "already ingested: same sha256"
        return summary
    if done:
        summary.note = f"resumed after row {done:,}"
    names = ", ".join(target.columns)
    marks = ", ".join("?" for _ in target.columns)
    sql = {
        "insert": f"INSERT INTO {target.table} ({names}) VALUES ({marks})",
        "fts": f"INSERT INTO {target.fts}(rowid, {target.text_column}) SELECT id, {target.text_column} FROM {target.table} WHERE id > ?",
    }
    target.start(source)
    bar = _progress_bar(source, done) if progress else None
    try:
        for batch in _prepared_batches(source, target, batch_size, done, read_options):
            _write_batch(conn, target, known, batch, dataset_id, summary, sql)
            if bar is not None:
                bar.update(batch.rows_read)
    finally:
        if bar is not None:
            bar.render_finish()
    conn.execute("UPDATE datasets SET status = 'complete' WHERE id = ?", (dataset_id,))
    return summary


def _progress_bar(source, done: int):
    import click

    bar = click.progressbar(length=source.num_rows or 0, label=Path(source.path).name, file=sys.stderr, show_pos=True)
    bar.update(done)
    return bar


def _ingest(db_path: Path, sources, target_class, batch_size: int, progress: bool, options: str = "", **read_options) -> Summary:
    """Ingest every source into db_path; a file that fails is reported and the others go on."""
    started = time.perf_counter()
    summary = Summary()
    with _IngestLock(db_path):
        conn = connect(db_path)
        try:
            schema.ensure_schema(conn)
            target = target_class(conn)
            opened = []
            for open_source in sources:
                try:
                    opened.append(open_source())
                except InputError as error:
                    summary.files.append(FileSummary(path=error.path, error=str(error)))
            # Random-order index inserts cost more than the rows: for a big load, drop these (keys are
            # deduped in memory) and build them in one sort at the end. Should this process be killed,
            # the next ingest builds them; until then the keys are still unique. A small load into a
            # big table keeps them: rebuilding costs ~35 s at 12M rows, updating them a few ms.
            present = conn.execute(f"SELECT coalesce(max(id), 0) FROM {target.table}").fetchone()[0]
            incoming = sum(source.num_rows if source.num_rows is not None else present for source in opened)
            deferred = schema.DEFERRED_INDEXES[target.table] if incoming * KEEP_INDEXES_BELOW > present else {}
            for index in deferred:
                conn.execute(f"DROP INDEX IF EXISTS {index}")
            known = KnownKeys(conn, target.table, with_ids=target.needs_ids)
            # Rows taken down stay down: their keys count as present, so no ingest brings them back.
            removed = np.fromiter((k for (k,) in conn.execute("SELECT key FROM removed_rows WHERE item = ?", (target.item,))), dtype=np.int64)
            if len(removed):
                known.add(removed, np.full(len(removed), -1) if known.ids is not None else None)
            storage_error = None
            try:
                for source in opened:
                    try:
                        summary.files.append(_ingest_source(conn, source, target, known, batch_size, progress, options, **read_options))
                    except InputError as error:
                        summary.files.append(FileSummary(path=error.path, error=str(error)))
            except Exception as error:
                if not _out_of_storage(error):
                    raise
                storage_error = error
            finally:
                try:
                    # The sorter may use both cores: 24.5 s -> 19 s for the key index at 12.1M rows.
                    conn.execute(f"PRAGMA threads={min(4, os.cpu_count() or 1)}")
                    # Every deferred index, not only those dropped here: a killed earlier run may have left one out.
                    for index, columns in schema.DEFERRED_INDEXES[target.table].items():
                        unique = "UNIQUE " if columns.endswith("(key)") else ""
                        conn.execute(f"CREATE {unique}INDEX IF NOT EXISTS {index} ON {columns}")
                except Exception as error:
                    if not _out_of_storage(error):
                        raise
                    storage_error = storage_error or error  # the next ingest builds them
            if storage_error is not None:
                raise InputError(
                    db_path,
                    f"cannot write the database ({storage_error}; is the disk full?). Every batch written before this one "
                    "is kept whole and nothing of this one was written. Free some space and run the same command again: "
                    "it carries on where it stopped.",
                )
            if any(not f.error for f in summary.files):
                started_refresh = time.perf_counter()
                summary.artists = refresh_counts(conn, db_path, target.fts, target.vocab)
                summary.artist_seconds = time.perf_counter() - started_refresh
            conn.execute("PRAGMA optimize")
        finally:
            conn.close()
    summary.seconds = time.perf_counter() - started
    return summary


def refresh_counts(conn, db_path, fts: str, vocab: str) -> int:
    """After an ingest: the index's frequent-word counts, then the artists' table. Returns the artists.

    Out of space here, every row is already in: the error says so, and the next run redoes this."""
    from spellbook.ingest.artists import refresh_artists

    try:
        schema.refresh_term_counts(conn, fts, vocab)
        return refresh_artists(conn)
    except Exception as error:
        if not _out_of_storage(error):
            raise
        raise InputError(
            db_path,
            f"cannot write the database ({error}; is the disk full?). Every row is in; the word counts and the "
            "artists' table were left as they were. Free some space and run the same command again: it brings them up to date.",
        ) from None


def _out_of_storage(error: BaseException) -> bool:
    """SQLite could not write: the disk (or the process's file size limit) is full, or the write failed."""
    text = str(error).lower()
    return type(error).__name__ == "OperationalError" and ("disk is full" in text or "disk i/o error" in text)


def ingest_training_files(db_path: Path, paths, min_aesthetic: float | None = None, batch_size: int = 50_000, progress: bool = False) -> Summary:
    """`spellbook ingest laion`: LAION parquet files (or folders of them) into db_path."""
    from spellbook.ingest.readers import open_laion, parquet_files

    files = [file for path in paths for file in parquet_files(Path(path))]
    sources = [lambda file=file: open_laion(file, min_aesthetic) for file in files]
    options = f"min_aesthetic={min_aesthetic}" if min_aesthetic is not None else ""
    return _ingest(Path(db_path), sources, _TrainingTarget, batch_size, progress, options, min_aesthetic=min_aesthetic)


def ingest_prompt_files(db_path: Path, paths, source_format: str | None = None, batch_size: int = 50_000, progress: bool = False) -> Summary:
    """`spellbook ingest prompts`: prompt corpora (DiffusionDB, Lexica, Krea, I2P, image folders) into db_path."""
    from spellbook.ingest.readers import open_prompt_source

    sources = [lambda path=path: open_prompt_source(Path(path), source_format) for path in paths]
    return _ingest(Path(db_path), sources, _GenerationTarget, batch_size, progress)
