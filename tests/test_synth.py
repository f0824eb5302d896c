"""ingest.synth: exact schemas, determinism, the synthetic label, and distributions that follow the real samples.

Bands are wide enough for 20,000 rows of sampling noise (several standard deviations) and narrow enough
that a wrong generator fails them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spellbook.ingest import synth

DATA = Path(__file__).resolve().parent.parent / "data"
ROWS = 20_000
SEED = 7


@pytest.fixture(scope="module")
def laion_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "laion.parquet"
    synth.synth_laion(path, rows=ROWS, seed=SEED)
    return path


@pytest.fixture(scope="module")
def prompts_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "prompts.parquet"
    synth.synth_prompts(path, rows=ROWS, seed=SEED)
    return path


@pytest.fixture(scope="module")
def laion(laion_path):
    return pq.read_table(laion_path).to_pandas()


@pytest.fixture(scope="module")
def prompts(prompts_path):
    return pq.read_table(prompts_path).to_pandas()


# --- schema and label ------------------------------------------------------------------------------------

def test_laion_schema_is_exactly_v2(laion_path):
    real = pq.read_schema(DATA / "laion" / "improved_aesthetics_6plus_SCHEMA_ONLY_0rows.parquet")
    written = pq.read_schema(laion_path)
    assert written.names == real.names
    assert [f.type for f in written] == [f.type for f in real]
    assert written.remove_metadata().equals(real.remove_metadata())
    assert pq.ParquetFile(laion_path).metadata.num_rows == ROWS


def test_prompts_schema_is_exactly_diffusiondb(prompts_path):
    real = pq.read_schema(DATA / "prompts" / "diffusiondb_sample_metadata_schema.parquet")
    written = pq.read_schema(prompts_path)
    assert written.names == real.names
    assert [f.type for f in written] == [f.type for f in real]
    assert written.field("timestamp").type == pa.timestamp("ns", tz="UTC")
    assert written.remove_metadata().equals(real.remove_metadata())
    assert pq.ParquetFile(prompts_path).metadata.num_rows == ROWS


@pytest.mark.parametrize("fixture", ["laion_path", "prompts_path"])
def test_schema_metadata_says_synthetic(fixture, request):
    metadata = pq.read_schema(request.getfixturevalue(fixture)).metadata
    assert metadata[b"spellbook_synthetic"] == b"true"
    assert b"SYNTHETIC" in metadata[b"spellbook_synthetic_description"]
    assert metadata[b"spellbook_generator"] == f"ingest.synth/{synth.GENERATOR_VERSION}".encode()
    assert metadata[b"spellbook_seed"] == str(SEED).encode()


def test_laion_reader_sees_the_label(laion_path):
    from spellbook.ingest.readers.laion import LaionSource

    source = LaionSource(laion_path)
    assert source.synthetic is True
    assert source.format == "laion-aesthetics-v2"


def test_every_url_is_marked_and_well_formed(laion):
    for url in laion["URL"]:
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https"), url
        assert parts.hostname and " " not in url, url
        assert url.endswith("#synthetic"), url
    assert laion["URL"].is_unique
    real = set(pq.read_table(DATA / "laion" / "laion_url_text_10000.parquet", columns=["URL"]).column("URL").to_pylist())
    unmarked = laion["URL"].str.replace(r"#synthetic$", "", regex=True)
    assert not unmarked.isin(real).any()  # hosts are real, paths are not: no URL points at a real image


def test_strings_are_valid_utf8(laion_path, prompts_path):
    pq.read_table(laion_path).validate(full=True)
    pq.read_table(prompts_path).validate(full=True)


# --- determinism and streaming ---------------------------------------------------------------------------

@pytest.mark.parametrize("write", [synth.synth_laion, synth.synth_prompts])
def test_same_seed_same_bytes_other_seed_other_rows(write, tmp_path):
    write(tmp_path / "a.parquet", rows=3_000, seed=11)
    write(tmp_path / "b.parquet", rows=3_000, seed=11)
    write(tmp_path / "c.parquet", rows=3_000, seed=12)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    a, c = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "c.parquet")
    assert not a.equals(c)
    text = "TEXT" if "TEXT" in a.column_names else "prompt"
    same = sum(x == y for x, y in zip(a.column(text).to_pylist(), c.column(text).to_pylist()))
    assert same < 300  # not the same rows shuffled about: most rows differ
    assert not list((tmp_path).glob("*.partial"))


def test_streams_in_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "ROW_GROUP_ROWS", 5_000)
    synth.synth_laion(tmp_path / "l.parquet", rows=12_345, seed=1)
    synth.synth_prompts(tmp_path / "p.parquet", rows=12_345, seed=1)
    for name in ("l.parquet", "p.parquet"):
        meta = pq.ParquetFile(tmp_path / name).metadata
        assert meta.num_rows == 12_345
        assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5_000, 5_000, 2_345]
    index = pq.read_table(tmp_path / "l.parquet").column("__index_level_0__").to_numpy()
    assert np.array_equal(index, np.arange(12_345))


def test_rejects_no_rows(tmp_path):
    with pytest.raises(ValueError):
        synth.synth_laion(tmp_path / "x.parquet", rows=0)
    with pytest.raises(ValueError):
        synth.synth_prompts(tmp_path / "x.parquet", rows=0)


# --- artist names -----------------------------------------------------------------------------------------

def test_find_artists():
    assert synth.find_artists("Cottage by the Lake by Thomas Kinkade") == ["Thomas Kinkade"]
    assert synth.find_artists("castle, by greg rutkowski and alphonse mucha, 8 k") == ["Greg Rutkowski", "Alphonse Mucha"]
    assert synth.find_artists("mountains, by simon stalenhag") == ["Simon Stålenhag"]  # accents folded, accented name kept
    assert synth.find_artists("a red bicycle leaning on a wall, 4 k") == []
    assert synth.find_artists("an artist at work") == []  # "artist" is in the vocabulary file but is not a name


def test_artist_vocabulary():
    names = synth.load_artist_names()
    assert len(names) > 5_000
    assert "Greg Rutkowski" in names and "Simon Stålenhag" in names
    assert sum(not name.isascii() for name in names) > 100


# --- LAION distributions ----------------------------------------------------------------------------------

def test_caption_lengths_follow_real_captions(laion):
    words = laion["TEXT"].str.split().str.len()
    chars = laion["TEXT"].str.len()
    assert (chars > 0).all()
    assert 7.5 <= words.mean() <= 11.0  # real: 9.2
    assert 48 <= chars.mean() <= 70  # real: 58
    assert 40 <= chars.median() <= 56  # real: 48
    assert (chars > 300).sum() >= 20  # a long tail (real: 0.6% over 300 characters)


def test_caption_words_are_zipf_like(laion):
    captions = laion["TEXT"].str.lower().str.split()
    share = {word: captions.map(lambda ws, w=word: w in ws).mean() for word in ("of", "the", "and", "with", "for", "in", "a")}
    assert share["of"] > 0.05 and share["the"] > 0.05  # real: 11% and 13%
    assert all(s > 0.03 for s in share.values())
    counts = Counter(word for ws in captions for word in ws)
    frequencies = np.array(sorted(counts.values(), reverse=True), dtype=float)
    assert frequencies[0] > 20 * frequencies[999]  # heavy head, long tail
    assert len(counts) > 10_000


def test_captions_follow_real_word_order(laion):
    """Not word salad: most adjacent word pairs are pairs that real captions contain (bigram model)."""
    real = pq.read_table(DATA / "laion" / "laion_url_text_10000.parquet", columns=["TEXT"]).column("TEXT").to_pylist()
    real_pairs = {pair for text in real for pair in zip(text.split(), text.split()[1:])}
    pairs = [pair for text in laion["TEXT"][:5_000] for pair in zip(text.split(), text.split()[1:])]
    assert sum(pair in real_pairs for pair in pairs) / len(pairs) > 0.5
    assert laion["TEXT"].nunique() > 0.9 * ROWS  # ... yet not copies of the real captions
    assert laion["TEXT"].isin(set(real)).mean() < 0.1


def test_laion_artists_at_realistic_rates(laion):
    found = laion["TEXT"].map(synth.find_artists)
    share = (found.str.len() > 0).mean()
    assert 0.015 <= share <= 0.06
    mentions = Counter(name for names in found for name in names)
    assert len(mentions) >= 50  # a long tail of names ...
    top3 = sum(count for _, count in mentions.most_common(3))
    assert top3 >= 0.15 * sum(mentions.values())  # ... and a frequent head (Zipf)
    assert {"Thomas Kinkade", "Claude Monet", "Alphonse Mucha", "Greg Rutkowski"} & {n for n, _ in mentions.most_common(10)}
    accented = laion["TEXT"].str.contains("Stålenhag|Dürer|Dalí|Miró|Doré|Cézanne|Manet|Beksiński|Magritte|Fragonard")
    assert accented.sum() >= 5
    phrasing = laion["TEXT"][found.str.len() > 0]
    assert phrasing.str.contains(r"\bby ").mean() > 0.3


def test_hosts_follow_real_domain_mix(laion):
    hosts = [urlsplit(url).hostname for url in laion["URL"]]
    counts = Counter(hosts)
    assert len(counts) > 100
    top_host, top_count = counts.most_common(1)[0]
    assert 0.02 <= top_count / len(hosts) <= 0.10, top_host
    registered = Counter(".".join(host.split(".")[-2:]) for host in hosts)
    top10 = {domain for domain, _ in registered.most_common(10)}
    assert {"pinimg.com", "wp.com", "shopify.com"} <= top10
    assert any("amazon" in host for host in counts) and any("etsy" in host for host in counts)
    # Subdomain variety as in the real URLs: i0/i1/i2.wp.com, N.bp.blogspot.com, blog.files.wordpress.com ...
    assert len({host for host in counts if host.endswith(".wp.com")}) >= 3
    assert len({host for host in counts if host.endswith(".bp.blogspot.com")}) >= 3
    assert len({host for host in counts if host.endswith(".files.wordpress.com")}) >= 50
    assert len({host for host in counts if "amazon" in host}) >= 4
    path_lengths = np.array([len(urlsplit(url).path) for url in laion["URL"]])
    assert 40 <= np.median(path_lengths) <= 90  # real: about 60


def test_laion_scores_in_range(laion):
    score = laion["AESTHETIC_SCORE"]
    assert score.min() >= 6.0 and score.max() <= 8.5
    assert (score < 6.5).mean() > 0.7 and (score >= 7.0).sum() > 0
    assert score.median() < 6.3
    assert laion["similarity"].between(0.28, 0.45).all() and 0.31 <= laion["similarity"].mean() <= 0.35
    assert laion["punsafe"].between(0, 1).all() and 0.01 <= (laion["punsafe"] > 0.5).mean() <= 0.04
    assert laion["punsafe"].median() < 0.05
    assert laion["pwatermark"].between(0, 1).all() and laion["pwatermark"].median() < 0.3
    hashes = laion["hash"]
    assert hashes.is_unique and (hashes < 0).mean() > 0.4 and (hashes > 0).mean() > 0.4
    assert np.array_equal(laion["__index_level_0__"].to_numpy(), np.arange(ROWS))


def test_laion_sizes(laion):
    unknown = laion["WIDTH"].isna()
    assert 0.0025 <= unknown.mean() <= 0.008
    assert (laion["HEIGHT"].isna() == unknown).all()
    width, height = laion["WIDTH"][~unknown], laion["HEIGHT"][~unknown]
    assert (width > 0).all() and (height > 0).all()
    assert width.between(256, 1500).mean() > 0.8 and height.between(256, 1500).mean() > 0.8
    ratio = (width / height).round(2)
    assert ratio.value_counts().index[0] == 1.0
    assert {1.33, 1.5, 0.67} <= set(ratio.value_counts().index[:8])


# --- DiffusionDB distributions ----------------------------------------------------------------------------

def test_prompts_are_reused_like_reruns(prompts):
    per_prompt = prompts["prompt"].value_counts()
    assert ROWS / 3 < len(per_prompt) < ROWS  # re-runs, but mostly distinct prompts
    assert per_prompt.between(2, 6).mean() > 0.15
    assert per_prompt.max() <= 20
    same_prompt = prompts["prompt"].eq(prompts["prompt"].shift())
    same_user = prompts["user_name"].eq(prompts["user_name"].shift())
    assert same_user[same_prompt].mean() > 0.95  # a re-run is the same user's
    assert prompts[same_prompt]["seed"].ne(prompts["seed"].shift()[same_prompt]).all()


def test_prompt_structure(prompts):
    distinct = prompts["prompt"].drop_duplicates()
    assert distinct.str.contains(", ").mean() > 0.5
    for modifier in ("highly detailed", "trending on artstation", "octane render", "concept art", "8 k"):
        assert distinct.str.contains(modifier, regex=False).mean() > 0.01, modifier
    assert 0.001 < distinct.str.contains(r"\([^()]+:\d\.\d\)").mean() < 0.05  # rare A1111 weights
    assert distinct.str.endswith(" ").mean() > 0.8  # DiffusionDB's trailing space
    assert 80 <= distinct.str.len().mean() <= 250  # real: 148


def test_prompt_artists(prompts):
    distinct = prompts["prompt"].drop_duplicates()
    found = distinct.map(lambda p: list(dict.fromkeys(synth.find_artists(p))))
    share = (found.str.len() > 0).mean()
    assert 0.28 <= share <= 0.45
    assert (found.str.len() <= 3).mean() > 0.99
    mentions = Counter(name for names in found for name in names)
    assert mentions.most_common(1)[0][0] == "Greg Rutkowski"
    assert distinct.str.contains("greg rutkowski").sum() > distinct.str.contains("Greg Rutkowski").sum()  # lower-cased


def test_prompt_settings(prompts):
    sampler = prompts["sampler"]
    assert sampler.between(1, 9).all() and sampler.value_counts().index[0] == 8
    assert 0.7 < (sampler == 8).mean() < 0.97 and sampler.nunique() >= 6
    assert prompts["step"].value_counts().index[0] == 50 and prompts["step"].between(1, 150).all()
    assert prompts["cfg"].value_counts().index[0] == 7.0 and prompts["cfg"].between(1, 30).all()
    assert (prompts["cfg"] > 20).sum() > 0 and (prompts["cfg"] != 7).mean() > 0.15
    for side in ("width", "height"):
        assert (prompts[side] % 64 == 0).all() and prompts[side].between(64, 1024).all()
    assert ((prompts["width"] == 512) & (prompts["height"] == 512)).mean() > 0.4
    assert prompts["seed"].nunique() > 0.99 * ROWS


def test_prompt_identity_and_time(prompts):
    assert prompts["image_name"].str.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.png").all()
    assert prompts["image_name"].is_unique
    assert prompts["part_id"].min() == 1 and prompts["part_id"].max() == 2000
    assert prompts["user_name"].str.fullmatch(r"[0-9a-f]{64}").all()
    users = prompts["user_name"].value_counts()
    assert 1_000 < len(users) <= 10_000 and users.iloc[0] / ROWS < 0.1 and users.iloc[0] > 10 * users.median()
    time = prompts["timestamp"]
    assert time.min() >= pd.Timestamp("2022-08-06", tz="UTC") and time.max() < pd.Timestamp("2022-09-01", tz="UTC")
    assert (time.dt.second == 0).all()  # minute resolution, as in DiffusionDB
    days = time.dt.day.value_counts().sort_index()
    assert days.loc[25:31].sum() > 1.5 * days.loc[6:12].sum()  # usage rises through the month
    assert time.iloc[:1_000].max() < time.iloc[-1_000:].min()  # parts are time slices


def test_nsfw_scores(prompts):
    assert prompts["image_nsfw"].between(0, 1).all() and prompts["prompt_nsfw"].between(0, 1).all()
    assert 0.04 <= (prompts["image_nsfw"] > 0.5).mean() <= 0.11  # real sample: 7.6%
    assert prompts["prompt_nsfw"].median() < 0.02
