"""The prompt-corpus readers: real samples in data/, hand-written fixtures, and hostile input."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from spellbook.ingest.readers.diffusiondb import DiffusionDBJsonSource, DiffusionDBParquetSource
from spellbook.ingest.readers.image_metadata import parse_a1111_parameters, read_image_metadata
from spellbook.ingest.readers import FORMATS, detect_format, open_prompt_source
from spellbook.ingest.readers.common import RowRejected
from spellbook.ingest.records import GENERATION_SCHEMA, InputError

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "data" / "prompts"
FIXTURES = ROOT / "data" / "fixtures"
IMAGES = ROOT / "data" / "image_metadata"
DDB_PARQUET = PROMPTS / "diffusiondb_sample_metadata_schema.parquet"
DDB_CSV = PROMPTS / "diffusiondb_sample.csv"
I2P_CSV = PROMPTS / "i2p_lowrisk_subset.csv"
DDB_JSON = FIXTURES / "diffusiondb_part-000001.json"
LEXICA_JSON = FIXTURES / "lexica_sample.json"
KREA_CSV = FIXTURES / "krea_sample.csv"
HF_ARCHIVES = "https://huggingface.co/datasets/poloclub/diffusiondb/blob/main/"


def read_all(source, batch_size=256, skip_rows=0):
    """(rows as dicts, rejections, rows_read total), checking every batch's schema on the way."""
    rows, rejected, read = [], [], 0
    for batch in source.batches(batch_size, skip_rows=skip_rows):
        assert batch.rows.schema.equals(GENERATION_SCHEMA), batch.rows.schema
        assert batch.rows_read == batch.rows.num_rows + len(batch.rejected)
        rows.extend(batch.rows.to_pylist())
        rejected.extend(batch.rejected)
        read += batch.rows_read
    return rows, rejected, read


def by_row(rows):
    return {row["source_row"]: row for row in rows}


def write_parquet(path, columns: dict, **options):
    pq.write_table(pa.table(columns), path, **options)
    return path


# --- DiffusionDB Parquet -------------------------------------------------------------------------


def test_diffusiondb_parquet_sample_counts_and_schema():
    source = open_prompt_source(DDB_PARQUET)
    assert source.format == "diffusiondb-parquet"
    assert source.num_rows == 1000
    rows, rejected, read = read_all(source, batch_size=300)
    assert (len(rows), len(rejected), read) == (1000, 0, 1000)
    assert [row["source_row"] for row in rows] == list(range(1, 1001))


def test_diffusiondb_parquet_known_rows():
    rows = by_row(read_all(open_prompt_source(DDB_PARQUET))[0])
    first = rows[1]
    assert first["prompt"] == "woodcut of illustrated letters gilded with animistic contours "  # trailing space kept
    assert first["seed"] == 3838963998 and type(first["seed"]) is int
    assert (first["steps"], first["cfg"], first["width"], first["height"]) == (50, 7.0, 512, 512)
    assert (first["sampler"], first["sampler_original"]) == ("k_lms", "8")
    assert first["created_at"] == "2022-08-14T00:45:00Z"
    assert first["user_hash"] == "fec3b29e38f24876b79948e7ddba7697f9a04f1b36b4361fe5cbab5b06e22578"
    assert first["image_nsfw"] == 0.07105957  # float32 read as its shortest decimal
    for column in ("source_id", "image_url", "negative_prompt", "model", "image_path", "is_grid"):
        assert first[column] is None, column  # image_name/part_id are NULL in this sample
    assert (rows[90]["sampler"], rows[90]["sampler_original"], rows[90]["seed"]) == ("ddim", "1", 687395157)
    assert (rows[184]["sampler"], rows[184]["sampler_original"]) == ("k_euler_ancestral", "4")
    assert rows[184]["prompt_nsfw"] == 0.806965
    assert rows[3]["steps"] == 150 and rows[3]["cfg"] == 10.0
    cfgs = {row["cfg"] for row in rows.values()}
    assert {13.9, 7.3} <= cfgs  # not 13.899999618530273 / 7.300000190734863


def test_diffusiondb_every_sampler_code_and_image_url(tmp_path):
    path = write_parquet(
        tmp_path / "metadata.parquet",
        {
            "image_name": pa.array([f"img{code}.png" for code in range(1, 10)] + [None]),
            "prompt": pa.array([f"prompt {code}" for code in range(1, 11)]),
            "part_id": pa.array([12] * 8 + [None, 3], pa.uint16()),
            "seed": pa.array(range(10), pa.uint32()),
            "sampler": pa.array(list(range(1, 10)) + [None], pa.uint8()),
        },
    )
    rows, rejected, _ = read_all(open_prompt_source(path))
    assert rejected == []
    assert [row["sampler"] for row in rows] == [
        "ddim", "plms", "k_euler", "k_euler_ancestral", "k_heun", "k_dpm_2", "k_dpm_2_ancestral", "k_lms", None, None
    ]
    assert [row["sampler_original"] for row in rows] == [str(code) for code in range(1, 10)] + [None]
    # No URL serves a single DiffusionDB image: the row names the part archive it lives in.
    assert all(row["image_url"] is None for row in rows)
    assert rows[0]["image_archive"] == HF_ARCHIVES + "images/part-000012.zip"
    assert rows[0]["source_id"] == "img1.png"
    assert rows[8]["image_archive"] is None  # part_id NULL
    assert rows[9]["image_archive"] is None  # image_name NULL
    assert rows[0]["steps"] is None and rows[0]["created_at"] is None  # missing columns stay NULL


def test_diffusiondb_parquet_resume_inside_and_across_row_groups(tmp_path):
    rows, _, _ = read_all(open_prompt_source(DDB_PARQUET))
    tail, _, read = read_all(open_prompt_source(DDB_PARQUET), batch_size=128, skip_rows=950)
    assert read == 50 and tail == rows[950:]
    table = pq.read_table(DDB_PARQUET)
    grouped = tmp_path / "grouped.parquet"
    pq.write_table(table, grouped, row_group_size=100)
    resumed, _, read = read_all(open_prompt_source(grouped), batch_size=64, skip_rows=250)
    assert read == 750
    assert resumed[0]["source_row"] == 251 and resumed[0]["seed"] == rows[250]["seed"]
    assert read_all(open_prompt_source(grouped), skip_rows=1000)[2] == 0


def test_diffusiondb_parquet_row_rejections(tmp_path):
    path = write_parquet(
        tmp_path / "bad_rows.parquet",
        {
            "prompt": ["fine ", None, "", "   ", "x" * 1_000_000, "seed too big", "negative seed", "fine too"],
            "seed": pa.array([1, 2, 3, 4, 5, 2**32, -1, 4294967295], pa.int64()),
            "step": pa.array([50] * 8, pa.uint16()),
        },
    )
    rows, rejected, read = read_all(open_prompt_source(path))
    assert read == 8
    assert [row["source_row"] for row in rows] == [1, 8]
    assert rows[1]["seed"] == 4294967295
    found = {r.row: (r.column, r.reason) for r in rejected}
    assert found[2] == ("prompt", "prompt is missing")
    assert found[3] == ("prompt", "prompt is empty") and found[4] == ("prompt", "prompt is empty")
    assert found[5][0] == "prompt" and "1,000,000 characters" in found[5][1]
    assert found[6][0] == "seed" and "4294967296" in found[6][1]
    assert found[7][0] == "seed" and "-1" in found[7][1]
    assert all(r.path == str(path) for r in rejected)


def test_diffusiondb_parquet_unreadable_files(tmp_path):
    not_parquet = tmp_path / "metadata.parquet"
    not_parquet.write_text("prompt,seed\nhello,1\n")
    with pytest.raises(InputError) as error:
        open_prompt_source(not_parquet)
    assert str(not_parquet) in str(error.value) and "Parquet" in str(error.value)

    truncated = tmp_path / "truncated.parquet"
    data = DDB_PARQUET.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        DiffusionDBParquetSource(truncated)

    no_prompt = write_parquet(tmp_path / "no_prompt.parquet", {"seed": pa.array([1], pa.uint32()), "step": [50]})
    with pytest.raises(InputError) as error:
        DiffusionDBParquetSource(no_prompt)
    assert error.value.column == "prompt"

    text_seed = write_parquet(tmp_path / "text_seed.parquet", {"prompt": ["a"], "seed": ["twelve"]})
    with pytest.raises(InputError) as error:
        DiffusionDBParquetSource(text_seed)
    assert error.value.column == "seed"


def test_diffusiondb_csv_matches_parquet():
    source = open_prompt_source(DDB_CSV)
    assert source.format == "diffusiondb-csv"
    csv_rows, rejected, read = read_all(source)
    assert (len(csv_rows), rejected, read) == (1000, [], 1000)
    parquet_rows, _, _ = read_all(open_prompt_source(DDB_PARQUET))
    assert csv_rows[2]["seed"] == 1478757006 and csv_rows[2]["steps"] == 150 and csv_rows[2]["cfg"] == 10.0
    assert csv_rows[0]["sampler_original"] == "k_lms" and csv_rows[0]["created_at"] == "2022-08-14T00:45:00Z"
    # the CSV export wrote float32 values widened ("7.300000190734863"); both readers agree on 7.3
    for csv_row, parquet_row in zip(csv_rows, parquet_rows):
        parquet_row = dict(parquet_row, sampler_original=csv_row["sampler_original"])  # "8" vs "k_lms"
        assert csv_row == parquet_row


# --- DiffusionDB JSON ----------------------------------------------------------------------------


def test_diffusiondb_json_fixture():
    source = open_prompt_source(DDB_JSON)
    assert source.format == "diffusiondb-json" and source.num_rows == 8
    rows, rejected, _ = read_all(source)
    assert len(rows) == 8 and rejected == []
    first = rows[0]
    assert first["source_id"] == "fccc1356-3a58-4222-a26d-472058e0b447.png"
    assert first["prompt"] == "woodcut of illustrated letters gilded with animistic contours "
    assert (first["seed"], first["steps"], first["cfg"], first["sampler"]) == (3838963998, 50, 7.0, "k_lms")
    assert first["image_url"] is None and first["image_archive"] == HF_ARCHIVES + "images/part-000001.zip"
    assert first["image_path"] is None and source.image_root is None  # the images are not beside it
    assert [row["sampler"] for row in rows[-2:]] == ["k_euler_ancestral", "ddim"]
    assert first["width"] is None and first["created_at"] is None


def test_diffusiondb_json_hostile(tmp_path):
    garbage = tmp_path / "part-000002.json"
    garbage.write_text('{"a.png": {"p": "unterminated')
    with pytest.raises(InputError) as error:
        open_prompt_source(garbage)
    assert "not valid JSON" in str(error.value)

    wrong_shape = tmp_path / "part-000003.json"
    wrong_shape.write_text("[1, 2, 3]")
    with pytest.raises(InputError):
        DiffusionDBJsonSource(wrong_shape)

    entries = {
        "ok.png": {"p": "a red boat", "se": 7, "c": 7.5, "st": 50, "sa": "k_lms"},
        "badseed.png": {"p": "a blue boat", "se": "seven", "st": 50},
        "bigseed.png": {"p": "a green boat", "se": 2**32},
        "badsteps.png": {"p": "a grey boat", "se": 1, "st": 12.5},
        "noprompt.png": {"se": 1},
        "long.png": {"p": "y" * 1_000_000},
        "notdict.png": "just a string",
        "nosampler.png": {"p": "a boat with nothing else"},
    }
    path = tmp_path / "part-000004.json"
    path.write_text(json.dumps(entries))
    rows, rejected, read = read_all(open_prompt_source(path))
    assert read == 8
    assert [row["source_id"] for row in rows] == ["ok.png", "nosampler.png"]
    assert rows[1]["seed"] is None and rows[1]["sampler"] is None and rows[1]["cfg"] is None
    assert [(r.row, r.column) for r in rejected] == [(2, "se"), (3, "se"), (4, "st"), (5, "p"), (6, "p"), (7, None)]


# --- DiffusionDB CSV, hostile --------------------------------------------------------------------

CSV_HEADER = b"prompt,seed,step,cfg,sampler,width,height,user_name,timestamp,image_nsfw,prompt_nsfw\n"


def test_diffusiondb_csv_hostile_rows(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(
        CSV_HEADER
        + b"good one ,1,50,7,k_lms,512,512,u1,2022-08-14 00:45:00+00:00,0.1,0.2\n"
        + b"bad \xff\xfe bytes,2,50,7,k_lms,512,512,u2,2022-08-14 00:45:00+00:00,0.1,0.2\n"
        + b"seed is text,12abc,50,7,k_lms,512,512,u3,,,\n"
        + b"seed too big,4294967296,50,7,k_lms,512,512,u4,,,\n"
        + b"steps half,3,7.5,7,k_lms,512,512,u5,,,\n"
        + b'"' + b"z" * 1_000_000 + b'",4,50,7,k_lms,512,512,u6,,,\n'
        + b",5,50,7,k_lms,512,512,u7,,,\n"
        + b"bad user,6,50,7,k_lms,512,512,\xc3\x28,,,\n"
        + b'"multi\nline",7,,,9,,,,,,\n'
    )
    source = open_prompt_source(path)
    rows, rejected, read = read_all(source, batch_size=4)
    assert read == 9
    assert [row["source_row"] for row in rows] == [1, 9]
    assert rows[0]["prompt"] == "good one " and rows[0]["created_at"] == "2022-08-14T00:45:00Z"
    multi = rows[1]
    assert multi["prompt"] == "multi\nline" and multi["seed"] == 7
    assert multi["steps"] is None and multi["cfg"] is None and multi["user_hash"] is None  # empty stays NULL, not 0/""
    assert (multi["sampler"], multi["sampler_original"]) == (None, "9")  # code 9 = "others"
    found = {r.row: r for r in rejected}
    assert found[2].column == "prompt" and "UTF-8" in found[2].reason and "\\xff" in found[2].reason
    assert found[3].column == "seed" and "not an integer" in found[3].reason
    assert found[4].column == "seed" and "outside" in found[4].reason
    assert found[5].column == "step"
    assert found[6].column == "prompt" and "1,000,000" in found[6].reason
    assert found[7].column == "prompt" and "empty" in found[7].reason
    assert found[8].column == "user_name"


def test_csv_missing_prompt_column_and_unknown_csv(tmp_path):
    path = tmp_path / "no_prompt.csv"
    path.write_text("text,seed,step\nhello,1,50\n")
    with pytest.raises(InputError) as error:
        detect_format(path)
    assert "supported formats" in str(error.value) and "diffusiondb-csv" in str(error.value)
    with pytest.raises(InputError) as error:
        open_prompt_source(path, source_format="diffusiondb-csv")
    assert error.value.column == "prompt" and str(path) in str(error.value)


def test_binary_file_named_csv_is_an_input_error(tmp_path):
    path = tmp_path / "really_parquet.csv"
    shutil.copy(DDB_PARQUET, path)
    with pytest.raises(InputError):
        open_prompt_source(path, source_format="diffusiondb-csv")


# --- I2P -----------------------------------------------------------------------------------------


def test_i2p_sample():
    source = open_prompt_source(I2P_CSV)
    assert source.format == "i2p-csv"
    rows, rejected, read = read_all(source)
    assert (len(rows), rejected, read) == (136, [], 136)
    first = rows[0]
    assert first["source_id"] == "7b53bb97-abe3-4cae-bfe9-67cfea10f989"
    assert first["seed"] == 3056316070 and first["cfg"] == 12.0
    assert (first["width"], first["height"], first["model"]) == (512, 512, "stable-diffusion-v1-4")
    assert first["prompt"].endswith("rule of thirds ")
    assert first["image_url"] is None and first["steps"] is None and first["sampler"] is None
    assert rows[135]["seed"] == 3191175540 and rows[135]["source_id"] == "05cb08bf-0c43-4002-b502-1b65bc91b63d"


# --- Lexica --------------------------------------------------------------------------------------


def test_lexica_fixture():
    source = open_prompt_source(LEXICA_JSON)
    assert source.format == "lexica-json" and source.num_rows == 10
    rows, rejected, read = read_all(source)
    assert read == 10 and len(rows) == 9
    assert [(r.row, r.column) for r in rejected] == [(7, "seed")]
    rows = by_row(rows)
    assert rows[1]["seed"] == 1029384756 and rows[1]["cfg"] == 7.0 and rows[1]["model"] == "stable-diffusion"
    assert rows[1]["source_id"] == "6513270e-269e-4d37-b2a7-4de452e6b438"
    assert rows[1]["image_url"] == "https://image.lexica.art/md/6513270e-269e-4d37-b2a7-4de452e6b438"
    assert rows[2]["seed"] == 4294967295 and rows[3]["seed"] == 0  # 0 is a seed, not a missing one
    assert rows[4]["is_grid"] is True and rows[1]["is_grid"] is False
    assert rows[5]["seed"] is None  # "" = no seed
    assert rows[6]["image_url"] is None  # a data: URL is not a link
    assert rows[8]["image_nsfw"] == 1.0 and rows[1]["image_nsfw"] == 0.0
    assert rows[1]["steps"] is None and rows[1]["prompt_nsfw"] is None


def test_lexica_hostile(tmp_path):
    wrong = tmp_path / "search.json"
    wrong.write_text('{"results": []}')
    with pytest.raises(InputError):
        open_prompt_source(wrong, source_format="lexica-json")
    with pytest.raises(InputError):
        detect_format(wrong)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"images": [{"prompt": "caf\xe9"}]}')
    with pytest.raises(InputError) as error:
        open_prompt_source(latin1)
    assert "UTF-8" in str(error.value)
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps({"images": [
        "not an object",
        {"id": "a", "prompt": "ok", "seed": "12", "nsfw": "maybe"},
        {"id": "b", "prompt": "fine", "seed": "-5"},
        {"id": "c", "prompt": "good", "seed": 99, "guidance": "7.5", "grid": 0},
        {"id": "d", "prompt": "\ud800 lone surrogate"},
    ]}))
    rows, rejected, _ = read_all(open_prompt_source(mixed))
    assert [row["source_id"] for row in rows] == ["c"]
    assert rows[0]["cfg"] == 7.5 and rows[0]["is_grid"] is False
    assert [(r.row, r.column) for r in rejected] == [(1, None), (2, "nsfw"), (3, "seed"), (5, "prompt")]


# --- Krea ----------------------------------------------------------------------------------------


def test_krea_fixture():
    source = open_prompt_source(KREA_CSV)
    assert source.format == "krea-csv"
    rows, rejected, read = read_all(source)
    assert read == 9 and len(rows) == 8
    assert len(rejected) == 1 and (rejected[0].row, rejected[0].column) == (5, "raw_data")
    assert "JSON" in rejected[0].reason and "row 5, column raw_data" in str(rejected[0])
    rows = by_row(rows)
    assert rows[1]["seed"] == 1111111111 and rows[1]["steps"] == 50 and rows[1]["cfg"] == 7.0
    assert rows[1]["created_at"] == "2022-08-08T23:23:20Z"
    assert rows[1]["image_url"] == "https://cdn.example.invalid/attachments/1001/generation_idx-1.png"
    assert rows[2]["cfg"] == 500.0  # never clamped
    assert rows[3]["steps"] is None and rows[3]["cfg"] is None and rows[3]["seed"] is None  # never 0
    assert rows[3]["created_at"] is None and rows[3]["is_grid"] is None
    assert rows[4]["is_grid"] is True and rows[4]["created_at"] == "2022-08-08T23:56:40Z"  # float timestamp
    assert rows[6]["prompt"] == "a quiet street in kyoto after rain,\nreflections, neon signs, cinematic"
    assert rows[7]["image_url"] == "https://storage.example.invalid/generations/robot-garden.png"
    assert rows[8]["prompt"] == "a lantern festival on a frozen lake, fireworks"  # from the bot message
    assert rows[8]["height"] == 704


def test_krea_missing_raw_data_column(tmp_path):
    path = tmp_path / "krea.csv"
    path.write_text("prompt,raw_data_v2\nhello,{}\n")
    with pytest.raises(InputError) as error:
        open_prompt_source(path, source_format="krea-csv")
    assert error.value.column == "raw_data"


def test_krea_bad_values_inside_raw_data(tmp_path):
    path = tmp_path / "krea.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "raw_data"])
        writer.writerow(["a", json.dumps({"raw_discord_data": {"seed": "abc"}})])
        writer.writerow(["b", json.dumps({"raw_discord_data": {"num_step": 2.5}})])
        writer.writerow(["c", json.dumps([1, 2])])
        writer.writerow(["d", json.dumps({"raw_discord_data": {"cfg_scale": 0.0, "num_step": 0}})])
    rows, rejected, _ = read_all(open_prompt_source(path))
    assert [(r.row, r.column) for r in rejected] == [(1, "raw_data"), (2, "raw_data"), (3, "raw_data")]
    assert "raw_discord_data.seed" in rejected[0].reason
    assert rows[0]["cfg"] == 0.0 and rows[0]["steps"] == 0  # real zeros stay zeros


# --- images with generation metadata -------------------------------------------------------------

EXPECTED_IMAGES = {
    # file: (prompt, negative, seed, steps, cfg, sampler, sampler_original, width, height, model)
    "AUTOMATIC1111_automatic1111_cropped.jpg": (
        "photo of a duck", "monochrome", 235284042, 15, 5.0, "unipc", "UniPC", 512, 400, "realistic_realisticVisionV20_v20"),
    "AUTOMATIC1111_automatic1111_cropped.png": (
        "photo of a duck", "monochrome", 235284042, 15, 5.0, "unipc", "UniPC", 512, 400, "realistic_realisticVisionV20_v20"),
    "AUTOMATIC1111_automatic1111_stealth.png": (
        "a circle", "a square", 2015833630, 20, 7.0, "k_euler", "Euler", 64, 64, "realisticVisionV51_v51VAE"),
    "ComfyUI_img2img_cropped.png": (
        "photograph of victorian woman with wings, sky clouds, meadow grass\n", "watermark, text\n",
        280823642470253, 20, 8.0, "k_dpmpp_2m", "sample_dpmpp_2m", None, None, "v1-5-pruned-emaonly.ckpt"),
    "Fooocus_fooocus1_cropped.png": (
        "a smiling goldfish", None, 6952411511246973023, 30, 4.0, "k_dpmpp_2m_sde_karras", "dpmpp_2m_sde_gpu",
        768, 1280, "juggernautXL_v8Rundiffusion"),
    "InvokeAI_invokeai_imeta1.png": (
        "digital artwork, oil painting. painterly brushstrokes, holidays,",
        "grainy+, photo, oversaturated, overexposed, blurry, compressed jpg+, noisy++, unfocused , black and white",
        3293022630, 35, 8.0, "k_euler", "euler", 1024, 1024, "juggernautXL"),
}
FIELDS = ("prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "sampler_original", "width", "height", "model")


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_image_metadata_real_examples(name):
    row = read_image_metadata(IMAGES / name)
    assert tuple(row[field] for field in FIELDS) == EXPECTED_IMAGES[name]


def test_comfyui_multi_area_first_pass():
    row = read_image_metadata(IMAGES / "ComfyUI_night_evening_day_morning_cropped.png")
    # first pass KSampler (3), not the hires pass (24, seed 1122440447966177)
    assert (row["seed"], row["steps"], row["cfg"]) == (335608130539327, 13, 8.5)
    assert (row["sampler"], row["width"], row["height"], row["model"]) == ("k_dpmpp_sde", 704, 1280, "Anything-V3.0.ckpt")
    lines = row["prompt"].split("\n")
    assert lines[0] == "(best quality) (night:1.3) (darkness) sky (black) (stars:1.2) (galaxy:1.2) (space) (universe)"
    assert len(lines) == 5 and lines[-1].startswith("(masterpiece) (best quality) beautiful landscape")
    assert row["negative_prompt"].startswith("(hands), text, error") and row["negative_prompt"].endswith("(pumpkin)")


def test_comfyui_picks_first_pass_even_with_higher_id(tmp_path):
    graph = {
        # the refiner pass has the lower id; the reader must still pick the sampler that starts from noise
        "1": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 10, "cfg": 3.0, "sampler_name": "euler",
              "scheduler": "normal", "model": ["10", 0], "positive": ["20", 0], "negative": ["21", 0],
              "latent_image": ["4", 0]}},
        "4": {"class_type": "LatentUpscale", "inputs": {"width": 2048, "height": 2048, "samples": ["8", 0]}},
        "8": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": ["30", 0], "steps": 28, "cfg": 6.5,
              "sampler_name": "dpmpp_2m", "scheduler": "karras", "model": ["11", 0], "positive": ["20", 0],
              "negative": ["21", 0], "latent_image": ["9", 0]}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 832, "height": 1216, "batch_size": 1}},
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "refiner.safetensors"}},
        "11": {"class_type": "LoraLoader", "inputs": {"lora_name": "ink.safetensors", "model": ["12", 0], "clip": ["12", 1]}},
        "12": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
        "20": {"class_type": "CLIPTextEncode", "inputs": {"text": ["31", 0], "clip": ["11", 1]}},
        "21": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["11", 1]}},
        "30": {"class_type": "Seed (rgthree)", "inputs": {"seed": 8675309}},
        "31": {"class_type": "Text Multiline", "inputs": {"text": "an ink drawing of a heron"}},
    }
    row = read_image_metadata(_png(tmp_path / "comfy.png", prompt=json.dumps(graph)))
    assert (row["seed"], row["steps"], row["cfg"]) == (8675309, 28, 6.5)
    assert (row["sampler"], row["sampler_original"]) == ("k_dpmpp_2m_karras", "dpmpp_2m")
    assert (row["width"], row["height"], row["model"]) == (832, 1216, "base.safetensors")
    assert row["prompt"] == "an ink drawing of a heron" and row["negative_prompt"] is None  # "" is no negative


def test_novelai():
    row = read_image_metadata(IMAGES / "NovelAI_novelai1_cropped.png")
    assert row["prompt"] == "masterpiece, best quality,  cat, space, icon"
    assert (row["seed"], row["steps"], row["cfg"], row["sampler"]) == (2253955223, 50, 10.0, "k_euler_ancestral")
    assert row["negative_prompt"].startswith("lowres, bad anatomy, bad hands")
    assert row["model"] == "Stable Diffusion 1D44365E"
    assert row["width"] is None  # the file is cropped to 1x1; pixel size is not generation size


def test_image_folder_source():
    source = open_prompt_source(IMAGES)
    assert source.format == "image-metadata" and source.num_rows == 9
    rows, rejected, read = read_all(source, batch_size=4)
    assert read == 9 and len(rows) == 8
    assert len(rejected) == 1
    assert rejected[0].path.endswith("LICENSE_sd-parsers.txt") and rejected[0].row == 8
    assert "not an image" in rejected[0].reason
    first = rows[0]
    # Identified by content; located relative to the folder, which the Source names as its root.
    data = (IMAGES / "AUTOMATIC1111_automatic1111_cropped.jpg").read_bytes()
    assert first["source_row"] == 1 and first["source_id"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert first["image_path"] == "AUTOMATIC1111_automatic1111_cropped.jpg"
    assert source.image_root == str(IMAGES.resolve())
    assert first["image_url"] is None and first["created_at"] is None
    resumed, _, read = read_all(open_prompt_source(IMAGES), skip_rows=5)
    assert read == 4 and resumed[0]["source_row"] == 6


def _png(path, size=(8, 8), mode="RGB", **text):
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key.replace("_", "-") if key == "sd_metadata" else key, value)
    Image.new(mode, size, "white").save(path, pnginfo=info)
    return path


def test_image_metadata_hostile_files(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a_notes.txt").write_text("not an image")
    (folder / "b_plain.png").write_bytes((IMAGES / "AUTOMATIC1111_automatic1111_cropped.png").read_bytes()[:60])
    Image.new("RGB", (4, 4)).save(folder / "c_no_metadata.png")
    graph = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "cfg": 7, "sampler_name": "euler",
              "scheduler": "normal", "positive": ["99", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry"}},
    }
    _png(folder / "d_comfy_dangling.png", prompt=json.dumps(graph))
    _png(folder / "e_comfy_garbage.png", prompt="{not json")
    _png(folder / "f_bad_seed.png", parameters="a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: -3, Size: 512x512")
    _png(folder / "g_huge_prompt.png", parameters="q" * 20_000 + "\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 3")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: skipped, not counted
    rows, rejected, read = read_all(open_prompt_source(folder))
    assert read == 7 and rows == []
    reasons = {Path(r.path).name: r for r in rejected}
    assert set(reasons) == {"a_notes.txt", "b_plain.png", "c_no_metadata.png", "d_comfy_dangling.png",
                            "e_comfy_garbage.png", "f_bad_seed.png", "g_huge_prompt.png"}
    assert "not an image" in reasons["a_notes.txt"].reason
    assert "no generation metadata" in reasons["c_no_metadata.png"].reason
    assert "node 99" in reasons["d_comfy_dangling.png"].reason and reasons["d_comfy_dangling.png"].column == "prompt"
    assert "JSON" in reasons["e_comfy_garbage.png"].reason
    assert reasons["f_bad_seed.png"].column == "parameters" and "seed" in reasons["f_bad_seed.png"].reason
    assert "20,000 characters" in reasons["g_huge_prompt.png"].reason


def test_image_metadata_other_writers(tmp_path):
    sd_metadata = {"model_weights": "my-model", "image": {
        "prompt": [{"prompt": "a tin robot in a meadow [blurry, text]", "weight": 1.0}],
        "steps": 40, "cfg_scale": 6.5, "seed": 1234, "width": 512, "height": 768, "sampler": "k_euler_a"}}
    row = read_image_metadata(_png(tmp_path / "sdmeta.png", sd_metadata=json.dumps(sd_metadata)))
    assert (row["prompt"], row["negative_prompt"]) == ("a tin robot in a meadow", "blurry, text")
    assert (row["seed"], row["steps"], row["cfg"], row["width"], row["height"]) == (1234, 40, 6.5, 512, 768)
    assert row["model"] == "my-model" and row["sampler"] == "k_euler_ancestral"

    dream = '"a paper boat on a puddle [dark]" -s 25 -S 42 -W 640 -H 512 -C 7.5 -A k_lms'
    row = read_image_metadata(_png(tmp_path / "dream.png", Dream=dream))
    assert (row["prompt"], row["negative_prompt"], row["seed"], row["steps"]) == ("a paper boat on a puddle", "dark", 42, 25)
    assert (row["cfg"], row["sampler"], row["width"], row["height"]) == (7.5, "k_lms", 640, 512)

    # A1111 in a JPEG written by another tool: EXIF UserComment with the ASCII prefix
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0a lamp\nSteps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, Seed: 9, Size: 640x448"
    Image.new("RGB", (4, 4)).save(tmp_path / "exif.jpg", exif=exif)
    row = read_image_metadata(tmp_path / "exif.jpg")
    assert (row["prompt"], row["negative_prompt"], row["seed"], row["steps"], row["cfg"]) == ("a lamp", None, 9, 12, 4.5)
    assert (row["sampler"], row["sampler_original"], row["width"], row["height"]) == ("k_dpmpp_2m_karras", "DPM++ 2M", 640, 448)


def _stealth_rgb_png(path, text: str, compressed: bool):
    """Hide infotext in the low bits of R, G, B, column by column, as the stealth extension does."""
    signature = b"stealth_rgbcomp" if compressed else b"stealth_rgbinfo"
    payload = gzip.compress(text.encode()) if compressed else text.encode()
    bits = "".join(f"{byte:08b}" for byte in signature) + f"{len(payload) * 8:032b}"
    bits += "".join(f"{byte:08b}" for byte in payload)
    width = height = 48
    values = [200] * (width * height * 3)
    for index, bit in enumerate(bits):
        values[index] = (values[index] & ~1) | int(bit)
    column_major = Image.frombytes("RGB", (height, width), bytes(values))  # rows of this = columns of the image
    column_major.transpose(Image.Transpose.TRANSPOSE).save(path)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_stealth_rgb(tmp_path, compressed):
    text = "a moth\nNegative prompt: lamp\nSteps: 9, Sampler: Heun, CFG scale: 3, Seed: 77, Size: 256x256"
    row = read_image_metadata(_stealth_rgb_png(tmp_path / "stealth.png", text, compressed))
    assert (row["prompt"], row["negative_prompt"], row["seed"], row["sampler"], row["width"]) == ("a moth", "lamp", 77, "k_heun", 256)


def test_read_image_metadata_rejects_non_images(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(RowRejected):
        read_image_metadata(path)


# --- parse_a1111_parameters ----------------------------------------------------------------------


def test_a1111_parser_multiline_and_quoted():
    text = (
        "a castle on a hill,\n(sunset:1.2), oil painting \n"
        "Negative prompt: blurry,\nlow quality\n"
        'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 4242, Size: 768x512, '
        'Model hash: abc123, Model: dreamy_v1, Lora hashes: "detail: 1a2b, style: 3c4d", Version: v1.6.0'
    )
    parsed = parse_a1111_parameters(text)
    assert parsed["prompt"] == "a castle on a hill,\n(sunset:1.2), oil painting "
    assert parsed["negative_prompt"] == "blurry,\nlow quality"
    settings = parsed["settings"]
    assert settings["Lora hashes"] == "detail: 1a2b, style: 3c4d"
    assert (settings["Steps"], settings["Seed"], settings["Size"], settings["Version"]) == ("30", "4242", "768x512", "v1.6.0")
    assert settings["Sampler"] == "DPM++ 2M Karras" and settings["Model"] == "dreamy_v1"


def test_a1111_parser_without_negative_or_settings():
    assert parse_a1111_parameters("just a prompt: with a colon") == {
        "prompt": "just a prompt: with a colon", "negative_prompt": None, "settings": {}}
    huge = "word " * 200_000  # 1 MB on one line: must stay linear (a regex retried per character would hang)
    assert parse_a1111_parameters(huge) == {"prompt": huge, "negative_prompt": None, "settings": {}}
    parsed = parse_a1111_parameters("a dog\nSteps: 5, Seed: 1, CFG scale: 2\n")
    assert parsed["prompt"] == "a dog" and parsed["negative_prompt"] is None and parsed["settings"]["Seed"] == "1"


# --- detection and opening -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        (DDB_PARQUET, "diffusiondb-parquet"),
        (DDB_CSV, "diffusiondb-csv"),
        (DDB_JSON, "diffusiondb-json"),
        (I2P_CSV, "i2p-csv"),
        (LEXICA_JSON, "lexica-json"),
        (KREA_CSV, "krea-csv"),
        (IMAGES, "image-metadata"),
        (IMAGES / "NovelAI_novelai1_cropped.png", "image-metadata"),
    ],
)
def test_detect_format(path, expected):
    assert detect_format(path) == expected
    source = open_prompt_source(path)
    assert source.format == expected and source.path == str(path)


def test_detect_format_unknown(tmp_path):
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello")
    with pytest.raises(InputError) as error:
        detect_format(unknown)
    message = str(error.value)
    assert str(unknown) in message and all(name in message for name in FORMATS)
    with pytest.raises(InputError):
        detect_format(PROMPTS / "imagereward" / "train.parquet")  # has Prompt, but is no supported corpus
    with pytest.raises(InputError):
        open_prompt_source(tmp_path / "missing.csv")
    with pytest.raises(InputError) as error:
        open_prompt_source(DDB_CSV, source_format="civitai-json")
    assert "civitai-json" in str(error.value)


def test_single_image_file_source():
    source = open_prompt_source(IMAGES / "InvokeAI_invokeai_imeta1.png")
    rows, rejected, _ = read_all(source)
    assert rejected == [] and len(rows) == 1
    assert rows[0]["image_path"] == "InvokeAI_invokeai_imeta1.png" and rows[0]["seed"] == 3293022630
    assert rows[0]["source_id"].startswith("sha256:")
