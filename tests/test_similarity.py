"""Similarity with CLIP: the model registry, real open_clip checkpoints from disk, the vector store
(LAION's shards, texts, images), hybrid ranking, look-alikes and the pages.

Ranking is tested with a deterministic stand-in model (tests/conftest.py: StandInModel); the
real model class on a tiny random open_clip checkpoint saved to disk and loaded back."""
from __future__ import annotations

import copy
import io
import shutil
import sqlite3 as stdlib_sqlite3
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from spellbook.embeddings import models
from spellbook.embeddings.embed import EmbedError, embed_images, embed_texts, import_laion
from spellbook.embeddings.store import VectorStore, vectors_path
from spellbook.ingest.load import ingest_prompt_files, ingest_training_files
from spellbook.queries import similar
from spellbook.site import default_config
from tests.conftest import StandInModel, spellbook_datasette, write_v2

pytestmark = pytest.mark.pages

# caption, image colour (the image LAION would have embedded), in this order
TRAINING = [
    ("a red fox in the snow", (255, 0, 0)),
    ("a fox", (0, 0, 255)),
    ("the sea at night", (230, 25, 25)),
    ("green hills", (0, 255, 0)),
    ("painting by zorana velk", (128, 0, 128)),
    ("an orchard, painting by zorana velk", (120, 0, 136)),
    ("zorana velk, portrait", (136, 0, 120)),
    ("purple flowers in a vase", (125, 3, 130)),
    ("a violet dress", (110, 0, 140)),
    ("a yellow car", (128, 128, 0)),
    ("a grey wall", (128, 128, 128)),
]


def url(i: int) -> str:
    return f"https://img{i}.example{i}.com/{i}.jpg"


def image(colour) -> Image.Image:
    return Image.new("RGB", (16, 16), colour)


@pytest.fixture
def colour_db(tmp_path):
    rows = [{"URL": url(i), "TEXT": caption} for i, (caption, _) in enumerate(TRAINING)]
    db = tmp_path / "colours.db"
    ingest_training_files(db, [write_v2(tmp_path / "colours.parquet", rows)])
    return db


def laion_shard(folder: Path, model, extra_unknown: int = 2) -> Path:
    """LAION's layout: img_emb/img_emb_0000.npy (float16, a row per metadata row) and
    metadata/metadata_0000.parquet with url and caption, plus rows that are not in the database."""
    captions = [caption for caption, _ in TRAINING] + [f"not ingested {i}" for i in range(extra_unknown)]
    urls = [url(i) for i in range(len(TRAINING))] + [f"https://elsewhere.org/{i}.jpg" for i in range(extra_unknown)]
    colours = [colour for _, colour in TRAINING] + [(10, 10, 10)] * extra_unknown
    vectors = model.embed_images([image(c) for c in colours]).astype(np.float16)
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "img_emb" / "img_emb_0000.npy", vectors)
    pq.write_table(pa.table({"image_path": [f"{i:09d}" for i in range(len(urls))], "caption": captions, "url": urls,
                             "NSFW": ["UNLIKELY"] * len(urls), "similarity": [0.3] * len(urls)}), folder / "metadata" / "metadata_0000.parquet")
    return folder / "img_emb"


@pytest.fixture
def embedded(colour_db, tmp_path, stand_in):
    summary = import_laion(colour_db, [laion_shard(tmp_path / "laion", stand_in)], stand_in)
    assert summary.linked == len(TRAINING) and summary.skipped == 2
    return colour_db


def ids_by_caption(db) -> dict[str, int]:
    with stdlib_sqlite3.connect(db) as conn:
        return {caption: i for i, caption in conn.execute("SELECT id, caption FROM training_images")}


# --- the registry and real checkpoints ------------------------------------------------------------


def test_the_registry_loads_a_model_once_and_takes_registered_ones(stand_in):
    assert models.get_model("stand-in", None) is stand_in
    assert stand_in.supports_text and stand_in.supports_images and stand_in.dimensions == 32
    real = models.get_model("ViT-B-32", "laion2b_s34b_b79k")
    assert isinstance(real, models.OpenClipModel) and real.model_id == "open_clip:ViT-B-32/laion2b_s34b_b79k"
    assert real._loaded is None  # nothing loaded until it is used
    assert models.get_model("ViT-B-32", "laion2b_s34b_b79k") is real


def test_a_tiny_checkpoint_saved_to_disk_loads_back_through_open_clip(tiny_clip, tmp_path):
    import open_clip  # tiny_clip skips without the clip extra
    import torch

    model = models.OpenClipModel(tiny_clip, None)
    texts = ["a castle by greg rutkowski", "a red fox"]
    vectors = model.embed_texts(texts)
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    # The same checkpoint through open_clip's own public path gives the same vectors.
    reference, _, _ = open_clip.create_model_and_transforms(tiny_clip)
    tokens = open_clip.get_tokenizer(tiny_clip)(texts)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(reference.eval().encode_text(tokens), dim=-1).numpy()
    assert np.allclose(vectors, expected, atol=1e-5)  # also: the shortened text pass equals the full one
    pictures = model.embed_images([image((255, 0, 0)), image((0, 0, 255))])
    assert pictures.shape == (2, 64)
    # The fingerprint is the weights' sha256: the folder moved is the same model.
    moved = tmp_path / "moved"
    shutil.copytree(tiny_clip.split(":", 1)[1], moved)
    assert models.OpenClipModel(f"local-dir:{moved}", None).fingerprint() == model.fingerprint()


def test_the_int8_text_tower_is_a_servers_choice_and_close_to_float(tiny_clip, monkeypatch):
    """SPELLBOOK_QUERY_INT8=1: the text tower's Linear layers quantised (dynamic int8); the same
    model (fingerprint) and vectors close to the float ones; images are untouched."""
    import torch

    texts = ["a castle by greg rutkowski", "a red fox in the snow", "portrait, oil on canvas"]
    float_model = models.OpenClipModel(tiny_clip, None)
    expected, pictures = float_model.embed_texts(texts), float_model.embed_images([image((255, 0, 0))])
    monkeypatch.setenv("SPELLBOOK_QUERY_INT8", "1")
    int8_model = models.OpenClipModel(tiny_clip, None)
    loaded, _, _ = int8_model.load()
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in loaded.transformer.modules())
    assert int8_model.fingerprint() == float_model.fingerprint()
    got = int8_model.embed_texts(texts)
    assert got.shape == expected.shape and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert (got * expected).sum(axis=1).min() > 0.99
    assert np.allclose(int8_model.embed_images([image((255, 0, 0))]), pictures, atol=1e-5)


def test_an_unreachable_pretrained_tag_fails_at_once_and_clearly():
    pytest.importorskip("open_clip")
    model = models.OpenClipModel("ViT-B-32", "laion2b_s34b_b79k")
    started = time.perf_counter()
    with pytest.raises(models.ModelError) as error:
        model.embed_texts(["a cat"])
    assert time.perf_counter() - started < 5  # no waiting on the hub: downloads are off unless asked for
    assert "ViT-B-32" in str(error.value) and "local-dir:" in str(error.value) and "downloads are off" in str(error.value)


# --- the vector store -----------------------------------------------------------------------------


def test_laion_shards_join_by_url_and_caption_and_skip_what_is_not_there(embedded, tmp_path, stand_in):
    store = VectorStore.beside(embedded, readonly=True)
    record = store.only_model()
    assert record.model_id == "stand-in" and record.dimensions == 32
    assert store.count(record, "training_image") == len(TRAINING)
    by_caption = ids_by_caption(embedded)
    vector = store.item_vectors(record, "training_image", [by_caption["green hills"]])[by_caption["green hills"]]
    assert np.argmax(vector[:3]) == 1  # the green image's vector, joined to the right row
    again = import_laion(embedded, [tmp_path / "laion" / "img_emb"], stand_in)  # idempotent
    assert again.embedded == 0 and "already imported" in again.report()


def test_laion_shards_must_align_with_their_metadata(colour_db, tmp_path, stand_in):
    folder = laion_shard(tmp_path / "laion", stand_in)
    np.save(folder / "img_emb_0000.npy", np.zeros((3, 32), np.float16))
    with pytest.raises(EmbedError) as error:
        import_laion(colour_db, [folder], stand_in)
    assert "img_emb_0000.npy" in str(error.value) and "align" in str(error.value)


def prompts_db(tmp_path, prompts: list[str]) -> Path:
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"prompt": prompts, "seed": pa.array(range(len(prompts)), pa.uint32())}), path)
    db = tmp_path / "prompts.db"
    ingest_prompt_files(db, [path], source_format="diffusiondb-parquet")
    return db


def test_text_embedding_dedupes_resumes_and_is_idempotent(tmp_path, stand_in):
    prompts = ["a red castle", "a red castle", "green hills", "a red castle", "blue sea", "green hills", "a fox"]
    db = prompts_db(tmp_path, prompts)
    first = embed_texts(db, stand_in, "generation_prompt", batch=2, limit=3)  # stopped part way
    assert first.items == 3
    rest = embed_texts(db, stand_in, "generation_prompt", batch=2)
    assert rest.items == len(prompts) - 3
    store = VectorStore.beside(db, readonly=True)
    record = store.only_model()
    assert store.count(record, "generation_prompt") == len(set(prompts)) == first.embedded + rest.embedded
    links = store.conn.execute("SELECT count(*) FROM vector_items WHERE collection = 'generation_prompt'").fetchone()[0]
    assert links == len(prompts)
    assert embed_texts(db, stand_in, "generation_prompt").items == 0  # nothing left to do


def png_with_prompt(path: Path, prompt: str, colour) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 16x16")
    path.parent.mkdir(parents=True, exist_ok=True)
    image(colour).save(path, pnginfo=info)
    return path


@pytest.fixture
def generated_db(tmp_path):
    folder = tmp_path / "outputs"
    for i, (prompt, colour) in enumerate([("a red apple", (250, 10, 10)), ("a blue boat", (10, 10, 250)), ("a green frog", (10, 250, 10)),
                                          ("a crimson rose", (200, 20, 30)), ("a purple plum", (120, 10, 130))]):
        png_with_prompt(folder / f"ComfyUI_{i:05d}_.png", prompt, colour)
    db = tmp_path / "gen.db"
    ingest_prompt_files(db, [folder])
    return db


@pytest.mark.parametrize("which", ["stand-in", "tiny open_clip"])
def test_an_images_own_embedding_finds_that_image_first(generated_db, which, request):
    model = request.getfixturevalue("stand_in") if which == "stand-in" else models.get_model(request.getfixturevalue("tiny_clip"), None)
    summary = embed_images(generated_db, model, "generation_image")
    assert summary.embedded == 5 and summary.failed == 0
    assert embed_images(generated_db, model, "generation_image").items == 0  # resumed: nothing left
    sim = similar.Similarity(generated_db)
    with stdlib_sqlite3.connect(generated_db) as conn:
        rows = conn.execute("SELECT g.id, g.image_path FROM generations g").fetchall()
    folder = generated_db.parent / "outputs"
    for generation_id, path in rows:
        vector = sim.image_vector(Image.open(folder / path))
        assert sim.nearest("generation_image", vector, k=3)[0].item_id == generation_id


# --- ranking --------------------------------------------------------------------------------------


def test_reciprocal_rank_fusion_on_a_known_case():
    fused = similar.fuse([5, 7, 9], [similar.Hit(7, 0.9), similar.Hit(3, 0.8), similar.Hit(5, 0.7)], 10)
    # 7: 1/62 + 1/61; 5: 1/61 + 1/63; 3: 1/62; 9: 1/63
    assert [h.item_id for h in fused] == [7, 5, 3, 9]
    assert [h.why for h in fused] == ["words and similarity", "words and similarity", "similarity", "words"]


def test_hybrid_search_fuses_words_and_similarity(embedded, stand_in):
    from spellbook.database.connect import connect_readonly

    ids = ids_by_caption(embedded)
    sim = similar.Similarity(embedded)
    conn = connect_readonly(embedded)
    result = similar.search(conn, sim, "red fox", mode="hybrid")
    order = [row["id"] for row in result["rows"]]
    assert order[:2] == [ids["a red fox in the snow"], ids["the sea at night"]]  # in both lists, then the red image
    why = {row["id"]: row["why"] for row in result["rows"]}
    assert why[ids["a red fox in the snow"]] == "words and similarity" and why[ids["the sea at night"]] == "similarity"
    keywords = similar.search(conn, sim, "fox", mode="keywords")
    assert [r["id"] for r in keywords["rows"]] == [ids["a fox"], ids["a red fox in the snow"]] and {r["why"] for r in keywords["rows"]} == {"words"}
    by_colour = similar.search(conn, sim, "green", mode="similarity")
    assert by_colour["rows"][0]["id"] == ids["green hills"] and by_colour["rows"][0]["similarity"] > 0.9


def test_lookalikes_are_near_the_artists_images_but_do_not_name_the_artist(embedded, stand_in):
    from spellbook.database.connect import connect_readonly
    from spellbook.text.fts import fts_query

    ids = ids_by_caption(embedded)
    result = similar.lookalikes(connect_readonly(embedded), similar.Similarity(embedded), fts_query('"zorana velk"'), limit=3)
    assert result["seeds"] == 3
    found = [row["id"] for row in result["rows"]]
    assert found[:2] == sorted(found[:2]) or set(found[:2]) == {ids["purple flowers in a vase"], ids["a violet dress"]}
    assert set(found[:2]) == {ids["purple flowers in a vase"], ids["a violet dress"]}
    assert not {ids[c] for c, _ in TRAINING if "zorana velk" in c} & set(found)
    assert all(row["similarity"] > 0.9 for row in result["rows"][:2]) and result["rows"][0]["like"] in {ids[c] for c, _ in TRAINING if "zorana velk" in c}


def test_queries_need_the_model_that_made_the_vectors(embedded, tiny_clip):
    sim = similar.Similarity(embedded, tiny_clip)
    with pytest.raises(similar.SimilarityUnavailable) as error:
        sim.text_vector("a fox")
    assert "stand-in" in str(error.value) and "--model" in str(error.value)


def test_index_build_then_add(embedded, stand_in, tmp_path):
    from spellbook.embeddings.indexing import build_indexes, index_path

    first = build_indexes(embedded)
    assert [s.collection for s in first] == ["training_image"] and first[0].rebuilt and first[0].total == len(TRAINING)
    store = VectorStore.beside(embedded)
    record = store.only_model()
    path = index_path(embedded, record, "training_image")
    assert path.exists()
    store.put(record, "training_image", [(1, 424242)], {424242: stand_in.embed_images([image((0, 255, 255))])[0]})
    store.close()
    again = build_indexes(embedded)
    assert not again[0].rebuilt and again[0].added == 1 and again[0].total == len(TRAINING) + 1
    sim = similar.Similarity(embedded)
    assert sim.nearest("training_image", stand_in.embed_images([image((0, 250, 250))])[0], k=1)[0].item_id == 1
    assert build_indexes(embedded)[0].added == 0


# --- pages ----------------------------------------------------------------------------------------


async def get(ds, path, status=200):
    response = await ds.client.get(path)
    assert response.status_code == status, (path, response.status_code, response.text[:400])
    return response


async def test_similar_pages_and_their_json(embedded, stand_in):
    ds = spellbook_datasette(embedded)
    ids = ids_by_caption(embedded)
    data = (await get(ds, "/-/similar.json?q=red+fox")).json()
    assert data["rows"][0]["id"] == ids["a red fox in the snow"] and data["rows"][0]["why"] == "words and similarity"
    assert data["similarity_unavailable"] is None
    page = (await get(ds, "/-/similar?q=red+fox")).text
    assert 'data-why="words and similarity"' in page and "more like this" in page
    more = (await get(ds, f"/-/similar.json?image={ids['a red fox in the snow']}")).json()
    assert more["rows"][0]["id"] == ids["the sea at night"] and ids["a red fox in the snow"] not in [r["id"] for r in more["rows"]]
    look = (await get(ds, "/-/artist/zorana%20velk/lookalikes.json")).json()
    assert {r["id"] for r in look["rows"][:2]} == {ids["purple flowers in a vase"], ids["a violet dress"]} and "not proof" in look["note"]
    csv_text = (await get(ds, "/-/artist/zorana%20velk/lookalikes.csv")).text
    assert csv_text.startswith("id,key,url,caption,domain,similarity,like") and "purple flowers" in csv_text
    assert "Look-alikes" in (await get(ds, "/-/artist/zorana%20velk")).text


async def test_upload_search_is_capped_and_decoded_safely(embedded, stand_in):
    ds = spellbook_datasette(embedded)
    ids = ids_by_caption(embedded)
    form = await get(ds, "/-/similar")
    token = __import__("re").search(r'name="csrftoken" value="([^"]+)"', form.text).group(1)
    cookies = {"ds_csrftoken": form.cookies.get("ds_csrftoken")}
    buffer = io.BytesIO()
    image((0, 250, 5)).save(buffer, "PNG")
    response = await ds.client.post("/-/similar.json", data={"csrftoken": token}, files={"image": ("x.png", buffer.getvalue(), "image/png")}, cookies=cookies)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["rows"][0]["id"] == ids["green hills"]
    bad = await ds.client.post("/-/similar", data={"csrftoken": token}, files={"image": ("x.png", b"not an image", "image/png")}, cookies=cookies)
    assert bad.status_code == 400 and "not an image" in bad.text
    huge = await ds.client.post("/-/similar", data={"csrftoken": token}, files={"image": ("x.png", b"\x89PNG" + b"0" * (9 << 20), "image/png")}, cookies=cookies)
    assert huge.status_code == 413


async def test_without_vectors_the_pages_say_so_and_words_still_work(colour_db):
    ds = spellbook_datasette(colour_db)
    page = (await get(ds, "/-/similar?q=fox")).text
    assert "Similarity search is not available here" in page and "no vector store" in page
    assert "a red <mark>fox</mark> in the snow" in page  # keyword matches, still
    data = (await get(ds, "/-/similar.json?q=fox")).json()
    assert data["similarity_unavailable"] and data["mode"] == "keywords" and len(data["rows"]) == 2
    fragment = (await get(ds, "/-/artist/zorana%20velk/lookalikes")).text
    assert "Look-alikes need image embeddings" in fragment


async def test_with_the_clip_extra_and_no_weights_reachable_the_pages_say_so(colour_db, tmp_path):
    pytest.importorskip("open_clip")
    """Vectors recorded as made by ViT-B-32/laion2b (as if embedded elsewhere): here the weights
    cannot be fetched, so a text query cannot be encoded, and the page says why."""
    store = VectorStore.beside(colour_db)
    real = models.OpenClipModel("ViT-B-32", "laion2b_s34b_b79k")
    store.conn.execute("INSERT INTO models(model_id, fingerprint, dimensions, precision, created_at) VALUES (?, ?, 512, 'int8', 'now')",
                       (real.model_id, real.fingerprint()))
    store.close()
    ds = spellbook_datasette(colour_db)
    page = (await get(ds, "/-/similar?q=fox")).text
    assert "Similarity search is not available here" in page and "cannot load open_clip model" in page
    assert "a red <mark>fox</mark> in the snow" in page


async def test_the_grid_shows_dead_links_from_the_link_checks(colour_db):
    from spellbook.embeddings.fetch import FetchResult

    store = VectorStore.beside(colour_db)
    store.record_links([FetchResult(1, url(1), None, 404, "http_error", "text/html", 120, 0.05, 1, "HTTP 404", None),
                        FetchResult(0, url(0), None, 200, "ok", "image/png", 900, 0.05, 1, None, None)])
    store.close()
    page = (await get(spellbook_datasette(colour_db), "/-/search?q=fox")).text
    assert page.count('class="sb-dead"') == 1 and "http_error" in page


async def test_a_prompt_page_shows_the_training_images_it_pulls_on_and_similar_prompts(embedded, stand_in, tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a green meadow", "green hills at dawn", "a red car"], "seed": pa.array([1, 2, 3], pa.uint32())}), path)
    ingest_prompt_files(embedded, [path], source_format="diffusiondb-parquet")
    embed_texts(embedded, stand_in, "generation_prompt")
    ds = spellbook_datasette(embedded)
    with stdlib_sqlite3.connect(embedded) as conn:
        meadow = conn.execute("SELECT id FROM generations WHERE prompt = 'a green meadow'").fetchone()[0]
        hills = conn.execute("SELECT id FROM generations WHERE prompt = 'green hills at dawn'").fetchone()[0]
    data = (await get(ds, f"/-/prompt/{meadow}/neighbours.json")).json()
    assert data["training"][0]["caption"] == "green hills"  # the green image
    assert data["prompts"][0]["id"] == hills and meadow not in [p["id"] for p in data["prompts"]]
    page = (await get(ds, f"/-/prompt/{meadow}")).text
    assert f"/-/prompt/{meadow}/neighbours" in page
    fragment = (await get(ds, f"/-/prompt/{meadow}/neighbours")).text
    assert "Training images nearest to this prompt" in fragment and "green hills" in fragment


def test_training_images_fetched_by_url_are_embedded_and_every_fetch_is_recorded(tmp_path, stand_in):
    from spellbook.embeddings.fetch import FetchLimits
    from tests.test_fetch import Site

    site = Site()
    try:
        buffer = io.BytesIO()
        image((0, 255, 0)).save(buffer, "PNG")
        site.serve("/green.png", buffer.getvalue())
        site.serve("/page.html", b"<html>hi</html>", "text/html")
        rows = [{"URL": site.url + "/green.png", "TEXT": "green hills"}, {"URL": site.url + "/missing.png", "TEXT": "a lost image"},
                {"URL": site.url + "/page.html", "TEXT": "not an image"}]
        db = tmp_path / "urls.db"
        ingest_training_files(db, [write_v2(tmp_path / "urls.parquet", rows)])
        summary = embed_images(db, stand_in, "training_image", fetch_limits=FetchLimits(allow_private=True, retries=0))
        assert (summary.embedded, summary.failed) == (1, 2) and summary.outcomes == {"ok": 1, "http_error": 1, "not_image": 1}
        store = VectorStore.beside(db, readonly=True)
        checks = dict(store.conn.execute("SELECT url, outcome FROM link_checks").fetchall())
        assert checks == {site.url + "/green.png": "ok", site.url + "/missing.png": "http_error", site.url + "/page.html": "not_image"}
        default = embed_images(db, stand_in, "training_image")  # the default limits never reach a private address
        assert default.embedded == 0 and default.outcomes == {"blocked": 2}  # the two not yet embedded, refused this time
    finally:
        site.stop()


class SlowToLoad(StandInModel):
    """The stand-in with a real model's first-use cost: its weights take a while to load (ViT-L-14:
    seconds), once per process."""

    LOAD_SECONDS = 1.5
    loads = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loaded = False

    def _load(self):
        if not self._loaded:
            time.sleep(self.LOAD_SECONDS)
            type(self).loads += 1
            self._loaded = True

    def embed_texts(self, texts):
        self._load()
        return super().embed_texts(texts)

    def embed_images(self, images):
        self._load()
        return super().embed_images(images)


async def test_the_first_search_of_a_fresh_server_is_not_cut_off_by_the_models_load(embedded, stand_in):
    """Regression: the model loaded inside the page's time limit, so on a fresh server (hosted: 5 s
    against ViT-L-14's load; here 20 ms, against a 1.5 s load) the first text searches answered 503
    "That took too long". (At 20 ms or less Datasette's limit checks every SQLite instruction.)"""
    from spellbook.embeddings import models

    models.register("stand-in", SlowToLoad)
    models.forget_models()
    SlowToLoad.loads = 0
    config = copy.deepcopy(default_config())
    config.setdefault("plugins", {}).setdefault("spellbook", {})["time_limit_ms"] = 20
    ds = spellbook_datasette(embedded, config=config)
    ids = ids_by_caption(embedded)
    first, again = [await ds.client.get("/-/similar.json?q=red+fox&mode=similarity") for _ in range(2)]
    for response in (first, again):
        assert response.status_code == 200, response.text[:300]
        assert response.json()["similarity_unavailable"] is None and response.json()["rows"][0]["id"] == ids["a red fox in the snow"]
    assert SlowToLoad.loads == 1  # once per process, started with the server


def test_finding_the_items_of_vectors_probes_the_vector_index(embedded, stand_in):
    """Regression: items_of asked for `ORDER BY item_id`, so SQLite walked the collection's whole
    primary key in item order instead of probing idx_vector_items_vector: 238 ms for 300 vectors
    among 1M items (every "more like this" and similarity page), 1.3 ms probed."""
    store = VectorStore.beside(embedded, readonly=True)
    try:
        executed = []
        store.conn.set_trace_callback(executed.append)
        ids = [vector_id for (vector_id,) in store.conn.execute("SELECT id FROM vectors ORDER BY id DESC")]
        items = store.items_of("training_image", ids)
        store.conn.set_trace_callback(None)
        assert sorted(items) == sorted(ids) and all(v == sorted(v) for v in items.values())
        [sql] = [s for s in executed if "FROM vector_items" in s]
        plan = " ".join(row[-1] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "idx_vector_items_vector" in plan, plan
    finally:
        store.close()
