"""`spellbook ingest prompts`: every corpus into the one generations table, keywords, per-day counts."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.conftest import DATA_DIR
from spellbook.cli import cli
from spellbook.database.connect import connect
from spellbook.ingest.load import ingest_prompt_files

PROMPTS = DATA_DIR / "prompts"
FIXTURES = DATA_DIR / "fixtures"


@pytest.fixture
def prompts_db(tmp_path):
    db = tmp_path / "prompts.db"
    summary = ingest_prompt_files(
        db,
        [
            PROMPTS / "diffusiondb_sample_metadata_schema.parquet",
            PROMPTS / "i2p_lowrisk_subset.csv",
            FIXTURES / "lexica_sample.json",
            FIXTURES / "krea_sample.csv",
            FIXTURES / "diffusiondb_part-000001.json",
            DATA_DIR / "image_metadata",
        ],
    )
    assert not summary.failed, summary.report()
    return db


def query(db, sql, params=()):
    conn = connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_row_counts_per_corpus(prompts_db):
    counts = dict(query(prompts_db, "SELECT source, count(*) FROM generations GROUP BY source"))
    # 1,000 DiffusionDB rows hold one exact duplicate; the part JSON adds 8 more.
    assert counts == {"diffusiondb": 999 + 8, "i2p": 136, "lexica": 9, "krea": 8, "image-metadata": 8}


def test_diffusiondb_values_seed_sampler_and_time(prompts_db):
    row = query(
        prompts_db,
        "SELECT seed, steps, cfg, sampler, sampler_original, width, height, created_at, negative_prompt, model, user_hash FROM generations WHERE prompt = ?",
        ("woodcut of illustrated letters gilded with animistic contours ",),
    )[0]
    assert row[0] == 3838963998 and isinstance(row[0], int)  # above 2^31: full uint32 range
    assert row[1:5] == (50, 7.0, "k_lms", "8")
    assert row[5:8] == (512, 512, "2022-08-14T00:45:00Z")
    assert row[8] is None and row[9] is None  # unknown stays NULL, never "" or 0
    assert row[10].startswith("fec3b29e")


def test_csv_export_of_the_same_rows_adds_nothing(prompts_db):
    summary = ingest_prompt_files(prompts_db, [PROMPTS / "diffusiondb_sample.csv"])
    assert (summary.total("inserted"), summary.total("already_present")) == (0, 1000)


def test_reingest_is_a_noop(prompts_db):
    before = query(prompts_db, "SELECT count(*), (SELECT sum(prompt_count) FROM keywords) FROM generations")[0]
    summary = ingest_prompt_files(prompts_db, [PROMPTS / "i2p_lowrisk_subset.csv", FIXTURES / "krea_sample.csv"])
    assert summary.total("inserted") == 0 and "already ingested" in summary.report()
    assert query(prompts_db, "SELECT count(*), (SELECT sum(prompt_count) FROM keywords) FROM generations")[0] == before


def test_krea_nulls_and_unclamped_cfg(prompts_db):
    cfgs = [r[0] for r in query(prompts_db, "SELECT cfg FROM generations WHERE source = 'krea' AND cfg IS NOT NULL")]
    assert 500.0 in cfgs
    missing = query(prompts_db, "SELECT steps, cfg FROM generations WHERE source = 'krea' AND steps IS NULL")
    assert missing and all(r == (None, None) for r in missing)


def test_lexica_seed_string_becomes_integer(prompts_db):
    seeds = [r[0] for r in query(prompts_db, "SELECT seed FROM generations WHERE source = 'lexica'")]
    assert all(s is None or isinstance(s, int) for s in seeds) and any(isinstance(s, int) for s in seeds)


def test_image_metadata_samplers_in_a1111_spelling(prompts_db):
    rows = dict(query(prompts_db, "SELECT image_path, sampler FROM generations WHERE source = 'image-metadata'"))
    assert rows["AUTOMATIC1111_automatic1111_cropped.png"] is not None


def test_keywords_artists_and_counts(prompts_db):
    kind, count = query(prompts_db, "SELECT kind, prompt_count FROM keywords WHERE keyword = 'greg rutkowski'")[0]
    assert kind == "artist"
    linked = query(prompts_db, "SELECT count(*) FROM generation_keywords gk JOIN keywords k ON k.id = gk.keyword_id WHERE k.keyword = 'greg rutkowski'")[0][0]
    assert count == linked
    mentioning = query(prompts_db, "SELECT count(*) FROM generations WHERE lower(prompt) LIKE '%rutkowski%'")[0][0]
    assert 0.9 * mentioning <= count <= mentioning
    assert query(prompts_db, "SELECT kind FROM keywords WHERE keyword = 'trending on artstation'")[0][0] == "modifier"


def test_keyword_days_add_up(prompts_db):
    for keyword_id, prompt_count in query(prompts_db, "SELECT id, prompt_count FROM keywords ORDER BY prompt_count DESC LIMIT 20"):
        dated = query(
            prompts_db,
            "SELECT count(*) FROM generation_keywords gk JOIN generations g ON g.id = gk.generation_id WHERE gk.keyword_id = ? AND g.created_at IS NOT NULL",
            (keyword_id,),
        )[0][0]
        assert query(prompts_db, "SELECT coalesce(sum(count), 0) FROM keyword_days WHERE keyword_id = ?", (keyword_id,))[0][0] == dated
    days = query(prompts_db, "SELECT sum(count) FROM prompt_days")[0][0]
    assert days == query(prompts_db, "SELECT count(*) FROM generations WHERE created_at IS NOT NULL")[0][0]


def test_artists_table_joins_both_sides(tmp_path, training_db):
    ingest_prompt_files(training_db, [PROMPTS / "diffusiondb_sample_metadata_schema.parquet"])
    rows = dict((r[0], r[1:]) for r in query(training_db, "SELECT name, training_count, prompt_count FROM artists"))
    assert rows["simon stålenhag"][0] == 3  # crafted captions, with and without the å
    assert rows["alphonse mucha"][0] >= 1
    assert rows["greg rutkowski"][1] > 100


def test_hostile_and_broken_input(tmp_path):
    hostile = tmp_path / "lexica.json"
    hostile.write_text(json.dumps({"images": [
        {"id": "a", "prompt": "<script>alert(1)</script>, by Greg Rutkowski", "seed": "12", "src": "javascript:alert(2)", "width": 512, "height": 512, "guidance": 7, "grid": False, "nsfw": False},
        {"id": "b", "prompt": "", "seed": "13"},
        {"id": "c", "prompt": "ok", "seed": "99999999999999999999"},
    ]}))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    db = tmp_path / "h.db"
    result = CliRunner().invoke(cli, ["ingest", "prompts", str(db), str(hostile), str(garbage)])
    assert "Traceback" not in result.output
    assert result.exit_code == 1
    assert f"ERROR {garbage}" in result.output
    assert "row 2, column prompt" in result.output and "row 3, column seed" in result.output
    assert query(db, "SELECT prompt, image_url FROM generations") == [("<script>alert(1)</script>, by Greg Rutkowski", None)]
    assert query(db, "PRAGMA integrity_check")[0][0] == "ok"


def test_ordinary_words_in_the_vocabulary_are_not_artists(training_db):
    names = {name for (name,) in query(training_db, "SELECT name FROM artists")}
    assert "artist" not in names and "constant" not in names
    assert "alphonse mucha" in names
