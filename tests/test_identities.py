"""No silent loss, stable identities: every distinct image is one row, computed independently.

Regression tests for rows that were dropped (Krea grid cells, images with one name in two
folders), for --min-aesthetic doing nothing, for counters that added up when a file was read
again, for a keyword's kind depending on ingest order, for DiffusionDB links that were made up,
and for "latest" meaning ingest order.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sqlite3 as stdlib_sqlite3
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from spellbook.cli import cli
from spellbook.ingest.load import ingest_prompt_files, ingest_training_files
from tests.conftest import DATA_DIR, REPO, URL_TEXT, spellbook_datasette, write_v2

SHARED = REPO.parent / "shared" / "data"
KREA_REAL = SHARED / "unlicensed" / "krea" / "1k.csv"
LEXICA_REAL = SHARED / "unlicensed" / "lexica" / "lexica_api_search_response.json"


def query(db, sql, params=()):
    with stdlib_sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def generations(db) -> int:
    return query(db, "SELECT count(*) FROM generations")[0][0]


# --- a distinct count per corpus, against an independent computation on the real samples ------


def test_diffusiondb_samples_hold_their_distinct_generations(tmp_path):
    parquet = DATA_DIR / "prompts" / "diffusiondb_sample_metadata_schema.parquet"
    table = pd.read_parquet(parquet)
    expected = len(table.drop_duplicates())  # the 1,000-row sample holds one exact duplicate
    db = tmp_path / "d.db"
    ingest_prompt_files(db, [parquet])
    assert generations(db) == expected == 999
    ingest_prompt_files(db, [DATA_DIR / "prompts" / "diffusiondb_sample.csv"])  # the same rows as CSV
    assert generations(db) == expected


def test_i2p_sample_holds_its_distinct_prompts(tmp_path):
    path = DATA_DIR / "prompts" / "i2p_lowrisk_subset.csv"
    expected = pd.read_csv(path)["lexica_url"].nunique()
    db = tmp_path / "i.db"
    ingest_prompt_files(db, [path])
    assert generations(db) == expected


def krea_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def distinct_krea_images(rows: list[dict]) -> int:
    """Independent of the reader: distinct (prompt, the whole raw_data), i.e. distinct images."""
    return len({(row["prompt"], json.dumps(json.loads(row["raw_data"]), sort_keys=True)) for row in rows})


def write_krea(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, ["prompt", "raw_data"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_krea_grid_cells_are_distinct_images(tmp_path):
    """Cells of one Discord grid share prompt, seed and time and differ only in their image."""
    cells = []
    for idx in range(4):
        discord = {"seed": 556046175, "width": 512, "height": 512, "is_grid": False, "num_step": 50, "cfg_scale": 15.0,
                   "timestamp": 1660001285, "image_uri": f"https://cdn.discordapp.com/attachments/1/2/a_kangaroo_-S_556046175_ts-1660001285_idx-{idx}.png"}
        cells.append({"prompt": "a kangaroo in a hoodie", "raw_data": json.dumps({"image_uri": "PENDING", "raw_discord_data": discord})})
    cells.append(dict(cells[0]))  # and one exact duplicate
    db = tmp_path / "k.db"
    ingest_prompt_files(db, [write_krea(tmp_path / "grid.csv", cells)], source_format="krea-csv")
    assert generations(db) == distinct_krea_images(cells) == 4


@pytest.mark.skipif(not KREA_REAL.exists(), reason="the real Krea sample lives in ../shared (it may not be copied into the project)")
def test_krea_real_sample_holds_997_distinct_images(tmp_path):
    rows = krea_rows(KREA_REAL)
    db = tmp_path / "k.db"
    summary = ingest_prompt_files(db, [KREA_REAL], source_format="krea-csv")
    rejected = summary.total("rejected")
    assert len(rows) == 998 and distinct_krea_images(rows) == 997
    assert generations(db) == 997 - rejected


@pytest.mark.skipif(not LEXICA_REAL.exists(), reason="the real Lexica sample lives in ../shared")
def test_lexica_real_sample_holds_its_distinct_images(tmp_path):
    records = json.loads(LEXICA_REAL.read_text())["images"]
    db = tmp_path / "l.db"
    ingest_prompt_files(db, [LEXICA_REAL])
    assert generations(db) == len({record["id"] for record in records}) == 50


def png(path: Path, text: str, color="white") -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, pnginfo=info)
    return path


def test_images_are_identified_by_content_not_by_name(tmp_path):
    settings = "\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    one = png(tmp_path / "day1" / "ComfyUI_00001_.png", "a lighthouse" + settings)
    png(tmp_path / "day2" / "ComfyUI_00001_.png", "a windmill" + settings)  # ComfyUI restarts its numbering
    shutil.copy(one, tmp_path / "day2" / "copy_of_lighthouse.png")  # the same image again
    db = tmp_path / "img.db"
    ingest_prompt_files(db, [tmp_path / "day1"])
    ingest_prompt_files(db, [tmp_path / "day2"])
    distinct = {hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*.png")}
    assert generations(db) == len(distinct) == 2
    assert sorted(p for (p,) in query(db, "SELECT prompt FROM generations")) == ["a lighthouse", "a windmill"]


def test_image_folder_sample_holds_its_distinct_images(tmp_path):
    images = [p for p in (DATA_DIR / "image_metadata").iterdir() if p.suffix in (".png", ".jpg")]
    db = tmp_path / "img.db"
    summary = ingest_prompt_files(db, [DATA_DIR / "image_metadata"])
    assert generations(db) == len({hashlib.sha256(p.read_bytes()).hexdigest() for p in images}) == 8
    assert summary.total("rejected") == 1  # LICENSE_sd-parsers.txt


# --- no absolute local paths -------------------------------------------------------------------


async def test_pages_serve_no_absolute_local_path(tmp_path):
    db = tmp_path / "img.db"
    ingest_prompt_files(db, [DATA_DIR / "image_metadata"])
    paths = query(db, "SELECT image_path FROM generations")
    assert paths and all(not path.startswith("/") for (path,) in paths)
    ds = spellbook_datasette(db)
    (generation_id,) = query(db, "SELECT id FROM generations LIMIT 1")[0]
    body = (await ds.client.get(f"/-/prompt/{generation_id}.json")).text
    assert str(DATA_DIR) not in body and str(tmp_path) not in body


# --- --min-aesthetic and re-reading -----------------------------------------------------------


def test_min_aesthetic_refuses_files_without_a_score(tmp_path):
    db = tmp_path / "m.db"
    result = CliRunner().invoke(cli, ["ingest", "laion", str(db), str(URL_TEXT), "--min-aesthetic", "6", "--no-progress"])
    assert result.exit_code == 1
    assert str(URL_TEXT) in result.output and "AESTHETIC_SCORE or aesthetic" in result.output and "aesthetic score" in result.output
    assert query(db, "SELECT count(*) FROM training_images")[0][0] == 0


def test_min_aesthetic_drops_rows_without_a_score(tmp_path):
    path = write_v2(tmp_path / "scores.parquet", [
        {"URL": "https://a.com/1.jpg", "TEXT": "high", "AESTHETIC_SCORE": 7.0},
        {"URL": "https://a.com/2.jpg", "TEXT": "low", "AESTHETIC_SCORE": 5.0},
        {"URL": "https://a.com/3.jpg", "TEXT": "unknown", "AESTHETIC_SCORE": None},
    ])
    db = tmp_path / "m.db"
    summary = ingest_training_files(db, [path], min_aesthetic=6.0)
    assert [c for (c,) in query(db, "SELECT caption FROM training_images")] == ["high"]
    assert summary.total("filtered") == 2


def test_reading_a_file_again_resets_its_counters(tmp_path):
    path = write_v2(tmp_path / "scores.parquet", [{"URL": f"https://a.com/{i}.jpg", "TEXT": f"cat {i}", "AESTHETIC_SCORE": 5.0 + i / 10} for i in range(30)])
    db = tmp_path / "r.db"
    ingest_training_files(db, [path], min_aesthetic=7.0)  # 10 of 30
    ingest_training_files(db, [path], min_aesthetic=6.0)  # 20 of 30: 10 new, 10 already present
    ((read, inserted, present, filtered),) = query(db, "SELECT rows_read, inserted, already_present, filtered FROM datasets")
    assert (read, inserted, present, filtered) == (30, 10, 10, 10)


# --- keyword kinds, latest ---------------------------------------------------------------------


def prompts_file(path: Path, prompts: list[str], timestamps: list[str] | None = None) -> Path:
    columns = {"prompt": prompts, "seed": pa.array(range(len(prompts)), pa.uint32())}
    if timestamps:
        columns["timestamp"] = pa.array(pd.to_datetime(timestamps, utc=True), pa.timestamp("s", tz="UTC"))
    pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("order", ["bare first", "by first"])
def test_a_keywords_kind_does_not_depend_on_ingest_order(tmp_path, order):
    bare = prompts_file(tmp_path / "bare.parquet", ["a quiet lake, jonas wenderlund, oil on canvas"] * 3)
    by = prompts_file(tmp_path / "by.parquet", ["a quiet lake at dawn, art by jonas wenderlund"])
    db = tmp_path / "k.db"
    files = [bare, by] if order == "bare first" else [by, bare]
    for file in files:
        ingest_prompt_files(db, [file], source_format="diffusiondb-parquet")
    assert query(db, "SELECT kind FROM keywords WHERE keyword = 'jonas wenderlund'") == [("artist",)]
    assert query(db, "SELECT prompt_count FROM keywords WHERE keyword = 'jonas wenderlund'") == [(4,)]


async def test_latest_prompts_are_the_newest_made_not_the_last_ingested(tmp_path):
    newer = prompts_file(tmp_path / "newer.parquet", ["made in december", "made in november"], ["2022-12-01T10:00:00", "2022-11-01T10:00:00"])
    older = prompts_file(tmp_path / "older.parquet", ["made in august", "undated"], ["2022-08-01T10:00:00", None])
    db = tmp_path / "l.db"
    ingest_prompt_files(db, [newer], source_format="diffusiondb-parquet")
    ingest_prompt_files(db, [older], source_format="diffusiondb-parquet")  # ingested last, made first
    ds = spellbook_datasette(db)
    rows = (await ds.client.get("/-/prompts.json")).json()["rows"]
    assert [row["prompt"] for row in rows] == ["made in december", "made in november", "made in august", "undated"]


# --- DiffusionDB: no made-up URLs; downloaded parts give local images ---------------------------


def diffusiondb_metadata(path: Path, names: list[str], part: int) -> Path:
    pq.write_table(pa.table({
        "image_name": names,
        "prompt": [f"a glass owl number {i}" for i in range(len(names))],
        "part_id": pa.array([part] * len(names), pa.uint16()),
        "seed": pa.array(range(len(names)), pa.uint32()),
        "sampler": pa.array([8] * len(names), pa.uint8()),
    }), path)
    return path


def diffusiondb_part(folder: Path, names: list[str], part: int) -> Path:
    folder.mkdir(parents=True)
    entries = {name: {"p": f"a glass owl number {i}", "se": i, "c": 7.0, "st": 50, "sa": "k_lms"} for i, name in enumerate(names)}
    (folder / f"part-{part:06d}.json").write_text(json.dumps(entries))
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / name)
    return folder


async def test_diffusiondb_rows_name_their_part_archive_not_a_made_up_url(tmp_path):
    db = tmp_path / "d.db"
    ingest_prompt_files(db, [diffusiondb_metadata(tmp_path / "metadata.parquet", ["a1.png", "a2.png"], 17)])
    assert query(db, "SELECT DISTINCT image_url FROM generations") == [(None,)]
    assert query(db, "SELECT DISTINCT image_archive FROM generations") == [("https://huggingface.co/datasets/poloclub/diffusiondb/blob/main/images/part-000017.zip",)]
    ds = spellbook_datasette(db)
    page = (await ds.client.get("/-/prompt/1")).text
    assert "part-000017.zip" in page and "a1.png" in page and "/-/prompt/1/image" not in page


@pytest.mark.parametrize("packed", ["folder", "zip"])
async def test_a_downloaded_part_gives_its_generations_their_images(tmp_path, packed, monkeypatch):
    names = ["b1.png", "b2.png", "b3.png"]
    db = tmp_path / "d.db"
    ingest_prompt_files(db, [diffusiondb_metadata(tmp_path / "metadata.parquet", names, 3)])  # the metadata first
    part = diffusiondb_part(tmp_path / "part-000003", names, 3)
    if packed == "zip":
        archive = tmp_path / "part-000003.zip"
        with zipfile.ZipFile(archive, "w") as handle:
            for file in sorted(part.iterdir()):
                handle.write(file, file.name)
        shutil.rmtree(part)
        part = archive
    summary = ingest_prompt_files(db, [part])
    assert summary.files[0].format == "diffusiondb-part" and summary.total("inserted") == 0
    assert generations(db) == 3
    assert sorted(p for (p,) in query(db, "SELECT image_path FROM generations")) == names
    monkeypatch.setenv("SPELLBOOK_LOCAL_IMAGES", "1")
    ds = spellbook_datasette(db)
    (generation_id,) = query(db, "SELECT id FROM generations WHERE source_id = 'b2.png'")[0]
    response = await ds.client.get(f"/-/prompt/{generation_id}/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(__import__("io").BytesIO(response.content)).getpixel((0, 0)) == (1, 0, 0)
    assert f"/-/prompt/{generation_id}/image" in (await ds.client.get(f"/-/prompt/{generation_id}")).text
    monkeypatch.delenv("SPELLBOOK_LOCAL_IMAGES")
    assert (await spellbook_datasette(db).client.get(f"/-/prompt/{generation_id}/image")).status_code == 404  # off unless asked for
