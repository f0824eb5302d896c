"""The one place that says what Spellbook's tables are.

Every schema change is a numbered migration; PRAGMA user_version records how far a file has come,
so opening an old database upgrades it and opening a current one does nothing.
"""
from __future__ import annotations

from spellbook.database.connect import transaction

# FTS5 folds case and diacritics ("Stalenhag" finds "Stålenhag"); detail=full keeps phrase queries.
# columnsize=0 saves ~10 bytes a row; bm25 then re-tokenizes the rows it ranks (at most RANK_LIMIT).
FTS_TOKENIZE = "unicode61 remove_diacritics 2"

TRAINING_TABLE = "training_images"
TRAINING_FTS = "training_images_fts"
TRAINING_FTS_VOCAB = "training_images_fts_vocab"  # per-term document counts, for estimates
# Unique indexes on the stable keys. Ingest drops them while it loads (it dedupes in memory:
# random inserts into this index cost more than the row itself) and builds them again at the end.
TRAINING_KEY_INDEX = "idx_training_images_key"
GENERATIONS_KEY_INDEX = "idx_generations_key"
KEYWORD_LINK_INDEX = "idx_generation_keywords_keyword"
# Browsing one domain's images, and intersecting a small domain with a search: without it, a rare
# domain means reading every row (a second at 12M rows). About 12 bytes a row.
TRAINING_DOMAIN_INDEX = "idx_training_images_domain"
# Indexes that ingest drops while it loads and builds again (in one sort) at the end, per table.
DEFERRED_INDEXES = {
    "training_images": {TRAINING_KEY_INDEX: "training_images(key)", TRAINING_DOMAIN_INDEX: "training_images(domain_id)"},
    "generations": {GENERATIONS_KEY_INDEX: "generations(key)", KEYWORD_LINK_INDEX: "generation_keywords(keyword_id, generation_id)"},
}

GENERATIONS_TABLE = "generations"
GENERATIONS_FTS = "generations_fts"
GENERATIONS_FTS_VOCAB = "generations_fts_vocab"

# Columns of training_images that come from a reader (spellbook.ingest.records.TRAINING_IMAGE_SCHEMA) in order.
TRAINING_COLUMNS = [
    "key",
    "url",
    "caption",
    "width",
    "height",
    "similarity",
    "punsafe",
    "pwatermark",
    "aesthetic_score",
    "hash",
    "language",
    "domain_id",
    "dataset_id",
]

GENERATION_COLUMNS = [
    "key",
    "source",
    "source_id",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "sampler_original",
    "width",
    "height",
    "model",
    "image_url",
    "image_path",
    "user_hash",
    "created_at",
    "image_nsfw",
    "prompt_nsfw",
    "is_grid",
    "image_archive",
    "model_hash",
    "generator",
    "extra",
    "image_root_id",
    "dataset_id",
]


def _execute_script(conn, script: str) -> None:
    """Run statements one by one: executescript() would COMMIT the migration's open transaction."""
    from spellbook.database.connect import sqlite3

    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement!r}")


def _migration_1_training_side(conn):
    _execute_script(
        conn,
        f"""
        CREATE TABLE datasets (
            id INTEGER PRIMARY KEY,
            file_name TEXT NOT NULL,
            sha256 TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,                 -- 'training' or 'prompts'
            schema_version TEXT NOT NULL,       -- 'laion-aesthetics-v2', 'diffusiondb-parquet', ...
            synthetic INTEGER NOT NULL DEFAULT 0,
            row_count INTEGER,                  -- rows in the file, where the format says
            rows_read INTEGER NOT NULL DEFAULT 0,  -- how far a possibly interrupted ingest got
            inserted INTEGER NOT NULL DEFAULT 0,
            already_present INTEGER NOT NULL DEFAULT 0,
            rejected INTEGER NOT NULL DEFAULT 0,
            filtered INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,               -- 'loading' until the last batch commits, then 'complete'
            ingested_at TEXT NOT NULL
        );
        CREATE TABLE domains (
            id INTEGER PRIMARY KEY,
            domain TEXT NOT NULL UNIQUE,        -- registered domain (eTLD+1), e.g. pinimg.com
            image_count INTEGER NOT NULL DEFAULT 0
        );
        -- key is the stable id: derived from (url, caption) alone, so the same pair in two files is
        -- one row, re-ingesting is a no-op, and /-/image/KEY links survive any rebuild.
        -- id is this database's row number, in ingest order: the FTS rowid. Sequential rowids keep
        -- pages full and FTS doclists small (hash rowids cost ~75 more bytes a row: bench/README.md).
        CREATE TABLE {TRAINING_TABLE} (
            id INTEGER PRIMARY KEY,
            key INT NOT NULL,
            url TEXT NOT NULL,
            caption TEXT NOT NULL,
            width INTEGER,
            height INTEGER,
            similarity REAL,
            punsafe REAL,
            pwatermark REAL,
            aesthetic_score REAL,
            hash INTEGER,
            language TEXT,
            domain_id INTEGER REFERENCES domains(id),
            dataset_id INTEGER REFERENCES datasets(id)
        );
        CREATE UNIQUE INDEX {TRAINING_KEY_INDEX} ON {TRAINING_TABLE}(key);
        -- No index on domain_id: domains.image_count answers the counts, and an index would cost
        -- ~17 bytes a row at 12M rows for browsing rare domains only.
        CREATE VIRTUAL TABLE {TRAINING_FTS} USING fts5(
            caption, content='{TRAINING_TABLE}', content_rowid='id', tokenize='{FTS_TOKENIZE}', columnsize=0
        );
        CREATE VIRTUAL TABLE {TRAINING_FTS_VOCAB} USING fts5vocab({TRAINING_FTS}, 'row');
        """
    )


def _migration_2_prompt_side(conn):
    _execute_script(
        conn,
        f"""
        -- One row per generated image (or prompt) of a prompt corpus; NULL where the corpus does not say.
        CREATE TABLE {GENERATIONS_TABLE} (
            id INTEGER PRIMARY KEY,          -- row number in ingest order (the FTS rowid)
            key INT NOT NULL,                -- stable: corpus + its own id (or the whole row when it has none)
            source TEXT NOT NULL,            -- corpus: diffusiondb, lexica, krea, i2p, image-metadata
            source_id TEXT,
            prompt TEXT NOT NULL,
            negative_prompt TEXT,
            seed INTEGER,                    -- full uint32 range (and 64-bit for ComfyUI/Fooocus images)
            steps INTEGER,
            cfg REAL,                        -- never clamped: 255 and 500 are real values
            sampler TEXT,                    -- canonical (k_lms, k_euler_ancestral...); see text/samplers.py
            sampler_original TEXT,           -- as the corpus wrote it ("8", "k_lms", "Euler a")
            width INTEGER,
            height INTEGER,
            model TEXT,
            image_url TEXT,
            image_path TEXT,
            user_hash TEXT,
            created_at TEXT,                 -- ISO 8601 UTC
            image_nsfw REAL,
            prompt_nsfw REAL,
            is_grid INTEGER,
            dataset_id INTEGER REFERENCES datasets(id)
        );
        CREATE UNIQUE INDEX {GENERATIONS_KEY_INDEX} ON {GENERATIONS_TABLE}(key);
        CREATE INDEX idx_generations_created_at ON {GENERATIONS_TABLE}(created_at);
        CREATE VIRTUAL TABLE {GENERATIONS_FTS} USING fts5(
            prompt, content='{GENERATIONS_TABLE}', content_rowid='id', tokenize='{FTS_TOKENIZE}'
        );
        CREATE VIRTUAL TABLE {GENERATIONS_FTS_VOCAB} USING fts5vocab({GENERATIONS_FTS}, 'row');

        -- Style keywords ("spells"): modifiers and artists, as text/keywords.py extracts them.
        CREATE TABLE keywords (
            id INTEGER PRIMARY KEY,
            keyword TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,              -- 'artist' or 'modifier'
            prompt_count INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX idx_keywords_kind_count ON keywords(kind, prompt_count);
        -- Keyed by generation so ingest appends; the by-keyword index is rebuilt after each ingest.
        CREATE TABLE generation_keywords (
            generation_id INTEGER NOT NULL REFERENCES {GENERATIONS_TABLE}(id),
            keyword_id INTEGER NOT NULL REFERENCES keywords(id),
            PRIMARY KEY (generation_id, keyword_id)
        ) WITHOUT ROWID;
        CREATE INDEX {KEYWORD_LINK_INDEX} ON generation_keywords(keyword_id, generation_id);
        -- Precomputed at ingest, for the per-day charts: uses of each keyword, and all prompts, per UTC day.
        CREATE TABLE keyword_days (
            keyword_id INTEGER NOT NULL REFERENCES keywords(id),
            day TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (keyword_id, day)
        ) WITHOUT ROWID;
        CREATE TABLE prompt_days (
            day TEXT PRIMARY KEY,
            count INTEGER NOT NULL
        ) WITHOUT ROWID;
        -- Precomputed after each ingest: how often each artist appears on both sides.
        CREATE TABLE artists (
            name TEXT PRIMARY KEY,           -- lower-cased canonical name
            keyword_id INTEGER REFERENCES keywords(id),
            training_count INTEGER NOT NULL DEFAULT 0,
            prompt_count INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX idx_artists_training ON artists(training_count);
        CREATE INDEX idx_artists_prompts ON artists(prompt_count);
        """,
    )


def _migration_3_identities_and_images(conn):
    """Where generated images are (relative to a recorded root, never an absolute path on a page),
    what the generating tool recorded beyond the columns, and an index for domain browsing."""
    _execute_script(
        conn,
        f"""
        -- A folder (or zip) that image files were ingested from. The path is this machine's and is
        -- never shown: pages name images by generation, and read them through their root.
        CREATE TABLE image_roots (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE
        );
        ALTER TABLE {GENERATIONS_TABLE} ADD COLUMN image_archive TEXT;   -- where the corpus publishes the image when no URL does: "images/part-000001.zip"
        ALTER TABLE {GENERATIONS_TABLE} ADD COLUMN model_hash TEXT;      -- the checkpoint hash the image recorded (A1111 "Model hash")
        ALTER TABLE {GENERATIONS_TABLE} ADD COLUMN generator TEXT;       -- the tool that wrote the image: AUTOMATIC1111, ComfyUI, ...
        ALTER TABLE {GENERATIONS_TABLE} ADD COLUMN extra TEXT;           -- JSON: every other setting the tool recorded, under its own names
        ALTER TABLE {GENERATIONS_TABLE} ADD COLUMN image_root_id INTEGER REFERENCES image_roots(id);  -- image_path is relative to this
        CREATE INDEX IF NOT EXISTS {TRAINING_DOMAIN_INDEX} ON {TRAINING_TABLE}(domain_id);
        -- Earlier databases stored absolute paths: keep each file's folder as its root.
        INSERT OR IGNORE INTO image_roots(path)
            SELECT DISTINCT rtrim(image_path, replace(image_path, '/', '')) FROM {GENERATIONS_TABLE}
            WHERE image_path LIKE '/%';
        UPDATE {GENERATIONS_TABLE} SET
            image_root_id = (SELECT r.id FROM image_roots r WHERE r.path = rtrim(image_path, replace(image_path, '/', ''))),
            image_path = replace(image_path, rtrim(image_path, replace(image_path, '/', '')), '')
            WHERE image_path LIKE '/%';
        """,
    )


# fts5vocab counts a term's documents by walking its whole doclist (25 ms for "the" at 12M rows):
# the counts of frequent terms are kept here, refreshed after every ingest; rarer terms are cheap
# to count on the spot.
TERM_COUNTS = "fts_term_counts"
FREQUENT_TERM_DOCS = 1_000


def _migration_4_term_counts(conn):
    _execute_script(
        conn,
        f"""
        CREATE TABLE {TERM_COUNTS} (
            fts TEXT NOT NULL,      -- training_images_fts or generations_fts
            term TEXT NOT NULL,     -- as the index stores it (folded)
            doc INTEGER NOT NULL,   -- rows holding it, as fts5vocab says
            PRIMARY KEY (fts, term)
        ) WITHOUT ROWID;
        """,
    )


def _migration_5_removals(conn):
    """Take-down: what was removed, why and when, and the identity of every removed row, so that its
    pages answer 410 and no later ingest brings it back. The rows themselves are deleted, with their
    FTS entries, vectors and counts; URLs are kept only as hashes."""
    _execute_script(
        conn,
        """
        CREATE TABLE removals (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,              -- url, key, hash, domain, file, release
            value TEXT NOT NULL,             -- what was asked for (a domain, a key; a URL only as its hash)
            reason TEXT NOT NULL,
            requested_by TEXT,
            rows_removed INTEGER NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE removed_rows (
            item TEXT NOT NULL,              -- training_image or generation
            key INTEGER NOT NULL,            -- the row's stable key
            item_id INTEGER NOT NULL,        -- its id when it was removed (row pages answer 410)
            url_hash INTEGER,                -- content_hash of its URL
            removal INTEGER NOT NULL REFERENCES removals(id),
            PRIMARY KEY (item, key)
        ) WITHOUT ROWID;
        CREATE INDEX idx_removed_rows_id ON removed_rows(item, item_id);
        """,
    )


def _migration_6_optout(conn):
    """Opt-out signals (`spellbook check-optout`): what each checked image's URL and its site say
    about AI training, and when that was checked. One row per image (its latest check) and one per
    origin (scheme://host:port) for the site-wide files."""
    _execute_script(
        conn,
        """
        CREATE TABLE optout_origins (
            origin TEXT PRIMARY KEY,         -- https://example.com (the port only when not the scheme's own)
            checked_at TEXT NOT NULL,
            tdmrep TEXT,                     -- /.well-known/tdmrep.json as served, when it parsed
            tdmrep_status TEXT NOT NULL,     -- found, none (4xx), invalid, or how the fetch failed
            ai_txt TEXT,                     -- /ai.txt as served
            ai_txt_status TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE optout_checks (
            image_id INTEGER PRIMARY KEY,    -- training_images.id
            checked_at TEXT NOT NULL,
            status TEXT NOT NULL,            -- ok (the image's headers were read) or how its fetch failed
            opted_out INTEGER,               -- 1: some signal reserves it; 0: none does; NULL: nothing could be read
            signals TEXT NOT NULL            -- JSON list of {"source", "value"[, "agent", "rule"]}
        );
        CREATE INDEX idx_optout_checks_opted ON optout_checks(opted_out, image_id);
        """,
    )


MIGRATIONS = [_migration_1_training_side, _migration_2_prompt_side, _migration_3_identities_and_images, _migration_4_term_counts, _migration_5_removals,
              _migration_6_optout]


def refresh_term_counts(conn, fts: str, vocab: str) -> int:
    """Recount the frequent terms of one FTS index (a walk of the whole index: ~2 s at 12M rows)."""
    with transaction(conn):
        conn.execute(f"DELETE FROM {TERM_COUNTS} WHERE fts = ?", (fts,))
        conn.execute(f"INSERT INTO {TERM_COUNTS}(fts, term, doc) SELECT ?, term, doc FROM {vocab} WHERE doc >= ?", (fts, FREQUENT_TERM_DOCS))
        count = conn.execute(f"SELECT count(*) FROM {TERM_COUNTS} WHERE fts = ?", (fts,)).fetchone()[0]
    return count


def schema_version(conn) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def ensure_schema(conn) -> None:
    """Create or upgrade the schema; each migration commits with its version number or not at all."""
    current = schema_version(conn)
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number <= current:
            continue
        with transaction(conn):
            migration(conn)
            conn.execute(f"PRAGMA user_version = {number}")
