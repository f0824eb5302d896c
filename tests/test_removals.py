"""Take-down: a removed row is gone from every surface, its pages answer 410, and it stays gone."""
from __future__ import annotations

import json
import sqlite3 as stdlib_sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spellbook.embeddings.embed import embed_texts, import_laion
from spellbook.embeddings.store import VectorStore
from spellbook.ingest.load import ingest_prompt_files, ingest_training_files
from spellbook.ingest.records import InputError
from spellbook.ingest.removals import list_removals, remove, remove_missing
from spellbook.queries import similar
from tests.conftest import spellbook_datasette, write_v2
from tests.test_similarity import TRAINING, image, laion_shard, url

pytestmark = pytest.mark.pages

TAKEN_DOWN = 4  # "painting by zorana velk"


def query(db, sql, params=()):
    with stdlib_sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def site_db(tmp_path, stand_in):
    rows = [{"URL": url(i), "TEXT": caption, "hash": 1000 + i} for i, (caption, _) in enumerate(TRAINING)]
    training = write_v2(tmp_path / "colours.parquet", rows)
    db = tmp_path / "site.db"
    ingest_training_files(db, [training])
    prompts = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": ["a castle, by zorana velk", "a castle, by zorana velk, oil painting", "a harbour at dawn"],
                             "seed": pa.array([1, 2, 3], pa.uint32()),
                             "timestamp": pa.array([1660000000, 1660000000, 1660090000], pa.timestamp("s", tz="UTC"))}), prompts)
    ingest_prompt_files(db, [prompts], source_format="diffusiondb-parquet")
    import_laion(db, [laion_shard(tmp_path / "laion", stand_in)], stand_in)
    embed_texts(db, stand_in, "generation_prompt")
    return db, training


async def test_a_removed_url_is_gone_from_every_surface_and_stays_gone(site_db, stand_in):
    db, training = site_db
    ds = spellbook_datasette(db)
    victim = url(TAKEN_DOWN)
    (victim_id, victim_key), = query(db, "SELECT id, key FROM training_images WHERE url = ?", (victim,))
    before_artist = (await ds.client.get("/-/artist/zorana%20velk.json")).json()["training"]["count"]
    before_domain = dict(query(db, "SELECT domain, image_count FROM domains"))

    summary = remove(db, "url", [victim], "the artist asked for it (request 17)", requested_by="publisher")
    assert summary.rows == 1 and summary.vectors == 1

    ds = spellbook_datasette(db)
    search = (await ds.client.get("/-/search.json?q=zorana+velk")).json()
    assert victim_id not in [r["id"] for r in search["rows"]] and search["total"] == before_artist - 1
    assert (await ds.client.get("/-/artist/zorana%20velk.json")).json()["training"]["count"] == before_artist - 1
    csv_text = (await ds.client.get("/-/artist/zorana%20velk.csv")).text
    assert victim not in csv_text
    gone = await ds.client.get(f"/-/image/{victim_key}")
    assert gone.status_code == 410 and "request 17" in gone.text
    domains = dict(query(db, "SELECT domain, image_count FROM domains"))
    assert sum(before_domain.values()) - sum(domains.values()) == 1
    assert query(db, "SELECT count(*) FROM training_images_fts WHERE training_images_fts MATCH ? AND rowid = ?", ('"zorana velk"', victim_id)) == [(0,)]
    store = VectorStore.beside(db, readonly=True)
    assert store.item_vectors(store.only_model(), "training_image", [victim_id]) == {}
    hits = similar.Similarity(db).nearest("training_image", stand_in.embed_images([image((128, 0, 128))])[0], k=20)
    assert victim_id not in [h.item_id for h in hits]
    assert [r["kind"] for r in list_removals(db)] == ["url"] and "hash" in list_removals(db)[0]["value"]

    rebuilt = write_v2(training.parent / "again.parquet", [{"URL": victim, "TEXT": TRAINING[TAKEN_DOWN][0]}])
    again = ingest_training_files(db, [rebuilt])  # a new file with the removed row in it: it stays removed
    assert again.total("inserted") == 0
    assert query(db, "SELECT count(*) FROM training_images WHERE url = ?", (victim,)) == [(0,)]


async def test_removing_prompts_updates_keyword_counts_and_their_pages_answer_410(site_db):
    db, _ = site_db
    (generation_id,), = query(db, "SELECT id FROM generations WHERE prompt = 'a castle, by zorana velk'")
    before = dict(query(db, "SELECT keyword, prompt_count FROM keywords"))
    remove(db, "id", [generation_id], "posted without consent", item="generation")
    after = dict(query(db, "SELECT keyword, prompt_count FROM keywords"))
    assert before["zorana velk"] - after["zorana velk"] == 1 and before["a castle"] - after["a castle"] == 1
    assert query(db, "SELECT count FROM prompt_days WHERE day = '2022-08-08'") == [(1,)]
    ds = spellbook_datasette(db)
    page = await ds.client.get(f"/-/prompt/{generation_id}")
    assert page.status_code == 410 and "posted without consent" in page.text
    assert (await ds.client.get(f"/-/prompt/{generation_id}.json")).status_code == 410
    rows = (await ds.client.get("/-/prompts.json?q=castle")).json()["rows"]
    assert generation_id not in [r["id"] for r in rows]


def test_removal_by_domain_key_and_laion_hash(site_db):
    db, _ = site_db
    (domain,), = query(db, "SELECT domain FROM training_images t JOIN domains d ON d.id = t.domain_id WHERE t.url = ?", (url(0),))
    assert remove(db, "domain", [domain], "domain opted out").rows == 1
    (key,), = query(db, "SELECT key FROM training_images WHERE url = ?", (url(1),))
    assert remove(db, "key", [key], "duplicate").rows == 1
    assert remove(db, "hash", ["1002"], "LAION's own list").rows == 1
    assert query(db, "SELECT count(*) FROM training_images")[0][0] == len(TRAINING) - 3
    assert query(db, "SELECT image_count FROM domains WHERE domain = ?", (domain,)) == [(0,)]


def test_a_newer_release_removes_what_it_no_longer_has(site_db, tmp_path):
    db, _ = site_db
    release = write_v2(tmp_path / "relaion.parquet", [{"URL": url(i), "TEXT": c} for i, (c, _) in enumerate(TRAINING) if i not in (2, 7)])
    summary = remove_missing(db, [release], "not in Re-LAION 2B-en research-safe")
    assert summary.rows == 2 and summary.kind == "release"
    assert {c for (c,) in query(db, "SELECT caption FROM training_images")} == {c for i, (c, _) in enumerate(TRAINING) if i not in (2, 7)}


def test_a_removal_needs_a_reason_and_leaves_nothing_half_done(site_db):
    db, _ = site_db
    with pytest.raises(InputError):
        remove(db, "url", [url(3)], "  ")
    with pytest.raises(InputError):
        remove(db, "hash", ["1"], "x", item="generation")
    assert query(db, "SELECT count(*) FROM removals") == [(0,)] and query(db, "SELECT count(*) FROM training_images")[0][0] == len(TRAINING)


async def test_datasettes_own_row_page_of_a_removed_row_answers_410(site_db):
    db, _ = site_db
    (victim_id,), = query(db, "SELECT id FROM training_images WHERE url = ?", (url(2),))
    remove(db, "url", [url(2)], "court order 2026-11")
    ds = spellbook_datasette(db)
    for path in (f"/{db.stem}/training_images/{victim_id}", f"/{db.stem}/training_images/{victim_id}.json"):
        response = await ds.client.get(path)
        assert response.status_code == 410 and "court order 2026-11" in response.text, path
        assert "content-security-policy" in response.headers
    assert (await ds.client.get(f"/{db.stem}/training_images/999999")).status_code == 404  # never there: still 404


async def _surfaces(ds, db, victim: str, victim_id: int, victim_key: int, neighbour_id: int, stand_in) -> dict[str, bool]:
    """Whether the victim shows on each surface a removal must reach: True where it does."""
    from spellbook.publish import published_copy

    async def text(path, status=200):
        response = await ds.client.get(path, follow_redirects=True)  # 1.0 sends ?sql= to /-/query
        assert response.status_code == status, (path, response.status_code)
        return response.text

    async def ids(path):
        return {row.get("id") or row.get("item_id") for row in (await ds.client.get(path)).json()["rows"]}

    domain = victim.split("/")[2].split(".", 1)[1]
    artist = (await ds.client.get("/-/artist/zorana%20velk.json")).json()["training"]
    store = VectorStore.beside(db, readonly=True)
    sim = similar.Similarity(db)
    purple = stand_in.embed_images([image((128, 0, 128))])[0]
    copy = published_copy(db, db.parent / "published" / "site.db")
    return {
        "search results (JSON)": victim_id in await ids("/-/search.json?q=zorana+velk"),
        "search results (page)": victim in await text("/-/search?q=zorana+velk"),
        "search total": (await ds.client.get("/-/search.json?q=zorana+velk")).json()["total"] == 3,
        "domain filter": (await ds.client.get(f"/-/search.json?domain={domain}")).json()["total"] > 0,
        "domain breakdown": any(d["domain"] == domain for d in (await ds.client.get("/-/domains.json")).json()["domains"]),
        "domain counts (table)": query(db, "SELECT image_count FROM domains WHERE domain = ?", (domain,)) == [(1,)],
        "artist report count": artist["count"] == 3,
        "artist report examples": victim in json.dumps(artist["examples"]),
        "artist CSV export": victim in await text("/-/artist/zorana%20velk.csv"),
        "evidence JSON": victim in await text("/-/artist/zorana%20velk/evidence.json"),
        "evidence CSV": victim in await text("/-/artist/zorana%20velk/evidence.csv"),
        "evidence page": victim in await text("/-/artist/zorana%20velk/evidence"),
        "similarity by text (hybrid)": victim_id in await ids("/-/similar.json?q=zorana+velk"),
        "similarity: more like a neighbour": victim_id in await ids(f"/-/similar.json?image={neighbour_id}"),
        "vector store": bool(store.item_vectors(store.only_model(), "training_image", [victim_id])),
        "vector index": victim_id in [hit.item_id for hit in sim.nearest("training_image", purple, k=20)],
        "Datasette table JSON": victim in await text(f"/{db.stem}/training_images.json?_search=zorana&_size=max"),
        "Datasette table CSV": victim in await text(f"/{db.stem}/training_images.csv?_search=zorana&_size=max"),
        "Datasette SQL": victim in await text(f"/{db.stem}.json?sql=select+url+from+training_images"),
        "Datasette row page": (await ds.client.get(f"/{db.stem}/training_images/{victim_id}")).status_code == 200,
        "stable link /-/image/KEY": (await ds.client.get(f"/-/image/{victim_key}")).status_code == 302,
        "full-text index": query(db, "SELECT count(*) FROM training_images_fts WHERE training_images_fts MATCH 'zorana' AND rowid = ?", (victim_id,)) == [(1,)],
        "opt-out checks": (await ds.client.get("/-/optout.json")).json()["checked"] == 1,
        "published copy (its bytes)": victim.encode() in copy.path.read_bytes(),
    }


async def test_one_removed_url_checked_on_every_surface(site_db, stand_in):
    """Each surface is first seen to show the row (so that its check can fail), then not to."""
    from spellbook.embeddings.indexing import build_indexes

    db, _ = site_db
    build_indexes(db)
    victim = url(TAKEN_DOWN)
    (victim_id, victim_key), = query(db, "SELECT id, key FROM training_images WHERE url = ?", (victim,))
    (neighbour_id,), = query(db, "SELECT id FROM training_images WHERE url = ?", (url(TAKEN_DOWN + 1),))
    conn = stdlib_sqlite3.connect(db)  # as `spellbook check-optout` stores a check
    with conn:
        conn.execute("INSERT INTO optout_checks(image_id, checked_at, status, opted_out, signals) VALUES (?, '2026-11-30T10:00:00Z', 'ok', 1, ?)",
                     (victim_id, json.dumps([{"source": "x-robots-tag", "value": "noai", "agent": "*"}])))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # an immutable reader sees only the main file (another
    conn.close()  # connection of the suite's, not yet collected, would keep close() from checkpointing)
    before = await _surfaces(spellbook_datasette(db), db, victim, victim_id, victim_key, neighbour_id, stand_in)
    assert all(before.values()), [name for name, shown in before.items() if not shown]
    remove(db, "url", [victim], "the artist asked (request 21)")
    after = await _surfaces(spellbook_datasette(db), db, victim, victim_id, victim_key, neighbour_id, stand_in)
    assert not any(after.values()), [name for name, shown in after.items() if shown]
    assert len(after) == 24  # the list the closing note gives
