"""`spellbook ingest laion` on real LAION samples: V1, V2 and URL+TEXT schemas, ids, FTS, domains."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from spellbook.cli import cli
from spellbook.database.connect import connect
from spellbook.ingest.keys import stable_key
from spellbook.ingest.load import ingest_training_files
from tests.conftest import write_v2


def rows(db, sql, params=()):
    conn = connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_v1_rows_keep_every_value(tmp_path, v1_parquet):
    db = tmp_path / "v1.db"
    summary = ingest_training_files(db, [v1_parquet])
    assert summary.files[0].format == "laion-aesthetics-v1"
    assert (summary.total("inserted"), summary.total("rejected")) == (5, 0)
    row = rows(db, "SELECT url, caption, width, height, similarity, punsafe, pwatermark, aesthetic_score, hash FROM training_images WHERE caption = ?", ("child eating healthy foods",))[0]
    assert row[0] == "https://www.goodnet.org/photos/620x0/27271.jpg"
    assert (row[2], row[3]) == (620, 414)
    assert row[4] == pytest.approx(0.322113)
    assert row[5] == pytest.approx(0.000423, rel=1e-4)
    assert row[7] == pytest.approx(7.301273, rel=1e-6)
    assert row[8] == -7415316196887465501  # LAION's signed int64 hash survives


def test_v2_schema_is_detected_and_scores_read(tmp_path, v2_parquet):
    assert "AESTHETIC_SCORE" in pq.read_schema(v2_parquet).names
    db = tmp_path / "v2.db"
    summary = ingest_training_files(db, [v2_parquet])
    assert summary.files[0].format == "laion-aesthetics-v2"
    scores = [r[0] for r in rows(db, "SELECT aesthetic_score FROM training_images ORDER BY aesthetic_score")]
    assert scores == pytest.approx([7.172503, 7.301273, 7.366945, 7.551183, 7.591557], rel=1e-6)


def test_url_text_only_rows_have_null_scores(tmp_path, url_text_parquet):
    db = tmp_path / "ut.db"
    summary = ingest_training_files(db, [url_text_parquet])
    assert summary.files[0].format == "laion-url-text"
    assert summary.total("inserted") == 9_999  # one row has a non-http URL
    assert rows(db, "SELECT count(*) FROM training_images WHERE aesthetic_score IS NULL AND width IS NULL")[0][0] == 9_999
    dataset = rows(db, "SELECT file_name, schema_version, row_count, status, length(sha256) FROM datasets")[0]
    assert dataset == ("laion_url_text_10000.parquet", "laion-url-text", 10_000, "complete", 64)


def test_same_pair_in_two_files_is_one_row_and_reingest_is_a_noop(tmp_path, v1_parquet, v2_parquet):
    db = tmp_path / "both.db"
    first = ingest_training_files(db, [v1_parquet])
    second = ingest_training_files(db, [v2_parquet])  # same five real rows, other schema and file
    assert first.total("inserted") == 5
    assert (second.total("inserted"), second.total("already_present")) == (0, 5)
    again = ingest_training_files(db, [v1_parquet, v2_parquet])
    assert again.total("inserted") == 0
    assert "already ingested" in again.report()
    assert rows(db, "SELECT count(*) FROM training_images")[0][0] == 5
    assert rows(db, "SELECT count(*) FROM datasets")[0][0] == 2


def test_stable_key_depends_only_on_url_and_caption(tmp_path):
    db = tmp_path / "ids.db"
    write_v2(tmp_path / "a.parquet", [{"URL": "https://example.com/a.jpg", "TEXT": "a cat"}])
    ingest_training_files(db, [tmp_path / "a.parquet"])
    assert rows(db, "SELECT key FROM training_images")[0][0] == stable_key("https://example.com/a.jpg", "a cat")
    assert stable_key("https://example.com/a.jpg", "a cat") != stable_key("https://example.com/a.jpg", "a dog")
    assert 0 < stable_key("x", "y") < 2**63


def test_min_aesthetic_filters_and_is_counted(tmp_path, v1_parquet):
    db = tmp_path / "min.db"
    summary = ingest_training_files(db, [v1_parquet], min_aesthetic=7.35)
    assert (summary.total("inserted"), summary.total("filtered")) == (3, 2)
    assert rows(db, "SELECT min(aesthetic_score) FROM training_images")[0][0] >= 7.35


def search(db, match):
    return [r[0] for r in rows(db, "SELECT t.caption FROM training_images_fts f JOIN training_images t ON t.id = f.rowid WHERE training_images_fts MATCH ? ORDER BY t.caption", (match,))]


def test_fts_folds_case_and_diacritics(training_db):
    found = search(training_db, "stalenhag")
    assert len(found) == 3
    assert "Tales from the Loop by Simon Stålenhag" in found
    assert search(training_db, "STÅLENHAG") == found


def test_fts_phrases_and_prefixes(training_db):
    assert search(training_db, '"simon stalenhag painting"') == ["Electric State, Simon Stalenhag painting"]
    assert search(training_db, '"stalenhag simon"') == []
    assert "portrait of a cat in the style of Alphonse Mucha" in search(training_db, "muc*")


def test_fts_does_not_store_captions_twice(training_db):
    sql = rows(training_db, "SELECT sql FROM sqlite_master WHERE name = 'training_images_fts'")[0][0]
    assert "content='training_images'" in sql
    shadow = {r[0] for r in rows(training_db, "SELECT name FROM sqlite_master WHERE name LIKE 'training_images_fts_%'")}
    assert "training_images_fts_content" not in shadow
    conn = connect(training_db)
    conn.execute("INSERT INTO training_images_fts(training_images_fts) VALUES ('integrity-check')")
    conn.close()


def test_registered_domains(training_db):
    domains = dict(rows(training_db, "SELECT domain, image_count FROM domains"))
    assert domains["pinimg.com"] >= 2  # i.pinimg.com and s-media-cache-ak0.pinimg.com are one
    assert "i.pinimg.com" not in domains
    assert domains["foo.blogspot.com"] == 1 and domains["bar.blogspot.com"] == 1
    total = rows(training_db, "SELECT count(*) FROM training_images")[0][0]
    assert sum(domains.values()) == total
    per_row = dict(rows(training_db, "SELECT d.domain, count(*) FROM training_images t JOIN domains d ON d.id = t.domain_id GROUP BY d.domain"))
    assert per_row == {d: n for d, n in domains.items() if n}


def test_nan_sizes_become_null(training_db):
    assert rows(training_db, "SELECT width, height FROM training_images WHERE caption LIKE 'portrait of a cat%'")[0] == (None, None)


def test_cli_prints_summary(tmp_path, v1_parquet):
    result = CliRunner().invoke(cli, ["ingest", "laion", str(tmp_path / "c.db"), str(v1_parquet), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "inserted 5" in result.output and "rejected 0" in result.output


def test_folder_of_parquet_files(tmp_path, v1_parquet):
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(3):
        write_v2(folder / f"part-{i}.parquet", [{"URL": f"https://example.com/{i}-{j}.jpg", "TEXT": f"caption {i} {j}"} for j in range(4)])
    summary = ingest_training_files(tmp_path / "f.db", [folder])
    assert len(summary.files) == 3 and summary.total("inserted") == 12


def test_progress_bar_on_request(tmp_path, v1_parquet):
    result = CliRunner().invoke(cli, ["ingest", "laion", str(tmp_path / "p.db"), str(v1_parquet), "--progress"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == v1_parquet.name  # the bar's label (on stderr; hidden bar off a terminal)
    quiet = CliRunner().invoke(cli, ["ingest", "laion", str(tmp_path / "q.db"), str(v1_parquet), "--no-progress"])
    assert quiet.output.splitlines()[0].startswith(str(v1_parquet))  # straight to the summary


def test_a_small_load_into_a_big_table_keeps_its_indexes(tmp_path):
    """Rebuilding the key and domain indexes costs ~35 s at 12M rows; a file a tenth the table's
    size or smaller updates them in place instead (and dedupes the same way)."""
    import sqlite3

    big = write_v2(tmp_path / "big.parquet", [{"URL": f"https://a{i % 9}.com/{i}.jpg", "TEXT": f"cat {i}"} for i in range(2_000)])
    small = write_v2(tmp_path / "small.parquet", [{"URL": f"https://b.com/{i}.jpg", "TEXT": f"dog {i}"} for i in range(50)] + [{"URL": "https://a1.com/1.jpg", "TEXT": "cat 1"}])
    db = tmp_path / "k.db"
    ingest_training_files(db, [big])

    def created():
        with sqlite3.connect(db) as conn:
            return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'idx_training%'").fetchall()), conn.execute(
                "PRAGMA schema_version").fetchone()[0]

    indexes, version = created()
    summary = ingest_training_files(db, [small])
    assert summary.total("inserted") == 50 and summary.total("already_present") == 1
    after, version_after = created()
    assert after == indexes and set(after) >= {"idx_training_images_key", "idx_training_images_domain"}
    assert version_after == version  # no index was dropped and created again
