"""The runner on real (tiny, random) pipelines loaded from disk like a user's: diffusers folders and
single-file checkpoints, SD 1.x and SDXL, LoRA and embedding files, 64x64 in a few steps."""
from __future__ import annotations

import numpy as np
import pytest

from tests.tiny_diffusion import diffusiondb_id, generation_id, one_thread, runner_db, runner_db_template, tiny_models  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("one_thread")]


def pixels(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def run(db, ids, overrides=None, **options):
    from spellbook.runner.regenerate import Overrides, RunnerOptions, regenerate

    results = regenerate(db, ids, overrides or Overrides(), RunnerOptions(**{"device": "cpu", **options}))
    return results


def only(results):
    assert len(results) == 1 and results[0].error is None, results[0].error
    return results[0]


# --- loading -----------------------------------------------------------------------------------------


def test_tiny_checkpoints_are_in_the_original_layout(tiny_models):
    """The test helper's diffusers -> LDM conversion is exactly inverted by diffusers' own converters."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    from tests.tiny_diffusion import single_file_state

    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_models["sdxl"]), local_files_only=True)
    state = single_file_state(pipe)
    for converted, model in ((convert_ldm_unet_checkpoint(state, pipe.unet.config), pipe.unet), (convert_ldm_vae_checkpoint(state, pipe.vae.config), pipe.vae)):
        reference = model.state_dict()
        assert set(converted) == set(reference) and all(torch.equal(converted[k], reference[k]) for k in reference)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_folder_and_single_file_load_alike(tiny_models, family):
    import torch

    from spellbook.runner.checkpoints import sha256_file
    from spellbook.runner.pipelines import RunnerError, load_model

    folder = load_model(str(tiny_models[family]), device="cpu")
    single = load_model(str(tiny_models[f"{family}_file"]), device="cpu", config=str(tiny_models[family]))
    assert (folder.family, single.family, folder.source, single.source) == (family, family, "folder", "single-file")
    assert single.sha256 == sha256_file(tiny_models[f"{family}_file"]) and single.short_hash == single.sha256[:10]
    assert load_model(str(tiny_models[family]), device="cpu") is folder  # weights load once per process
    import diffusers

    for loaded in (folder, single):  # the runner sets a scheduler per call: start both from the model's own
        loaded.pipe.scheduler = getattr(diffusers, loaded.scheduler_config["_class_name"]).from_config(loaded.scheduler_config)
    assert type(folder.pipe.scheduler) is type(single.pipe.scheduler)
    kwargs = {"prompt": "a red cube", "num_inference_steps": 3, "height": 64, "width": 64, "output_type": "np"}
    first = folder.pipe(generator=torch.Generator().manual_seed(1), **kwargs).images
    second = single.pipe(generator=torch.Generator().manual_seed(1), **kwargs).images
    assert np.array_equal(first, second)
    with pytest.raises(RunnerError, match="not in the local Hugging Face cache"):  # offline, no --config: the reason, not a hang
        load_model(str(tiny_models[f"{family}_file"]), device="cpu", dtype="bfloat16")


# --- regenerating rows --------------------------------------------------------------------------------


def test_checkpoint_found_by_hash_and_everything_recorded(runner_db, tiny_models):
    from spellbook.ingest.readers.image_metadata import read_image_metadata
    from spellbook.runner.store import RunnerStore

    castle = generation_id(runner_db, "castle.png")
    result = only(run(runner_db, [castle], models_dir=str(tiny_models["models"]), config=str(tiny_models["sd1"]),
                      lora_dir=str(tiny_models["loras"]), embeddings_dir=str(tiny_models["embeddings"])))
    record = RunnerStore.beside(runner_db).regeneration(result.regeneration_id)
    assert record["model"] == "tinySD1_v10.safetensors" and record["model_source"] == "single-file" and record["model_family"] == "sd1"
    assert "is the sha256 prefix of tinySD1_v10.safetensors" in record["model_reason"]
    assert (record["seed"], record["steps"], record["cfg"], record["width"], record["height"], record["clip_skip"]) == (12345, 6, 7.0, 64, 64, 2)
    assert (record["sampler"], record["schedule"], record["scheduler_class"]) == ("k_dpmpp_2m_karras", "karras", "DPMSolverMultistepScheduler")
    assert record["scheduler_config"]["use_karras_sigmas"] is True and record["scheduler_config"]["steps_offset"] == 1
    assert [(l["name"], l["weight"], l["file"]) for l in record["loras"]] == [("tinyStyle", 0.8, "tinyStyle.safetensors")]
    assert [e["name"] for e in record["embeddings"]] == ["tinyEmbed"]
    assert any(item.startswith("hires fix (") and "Hires upscale: 2" in item and "Hires steps: 4" in item for item in record["not_honoured"])
    import diffusers
    import torch

    assert (record["diffusers_version"], record["torch_version"], record["device"], record["dtype"]) == (diffusers.__version__, torch.__version__, "cpu", "float32")
    assert record["compel_version"] and record["seconds"] > 0 and record["batch_size"] == 1 and "AttnProcessor2_0" in record["attention"]
    assert record["source_image"] == 1 and 0 <= record["phash_distance"] <= 64
    assert record["score_note"].startswith("regenerated with the same settings, not an exact reproduction")

    # The PNG says the same, as A1111 writes it, and this project's reader reads it back field for field.
    read = read_image_metadata(result.image_path)
    assert (read["prompt"], read["negative_prompt"], read["seed"], read["steps"], read["cfg"], read["sampler"], read["width"], read["height"],
            read["model_hash"]) == (record["prompt"], record["negative_prompt"], record["seed"], record["steps"], record["cfg"], record["sampler"],
                                    record["width"], record["height"], record["model_hash"])
    assert read["model"] == "tinySD1_v10" and read["extra"]["Clip skip"] == "2" and read["extra"]["Schedule type"] == "Karras"
    assert read["extra"]["Lora hashes"] == f"tinyStyle: {record['loras'][0]['hash']}" and read["extra"]["TI hashes"].startswith("tinyEmbed: ")
    assert "<lora:tinyStyle:0.8>" in read["prompt"]  # the prompt as written, as A1111 keeps it


def test_old_a1111_hash_and_size_rounding(runner_db, tiny_models):
    result = only(run(runner_db, [generation_id(runner_db, "lighthouse.png")], models_dir=str(tiny_models["models"]), config=str(tiny_models["sd1"])))
    record = result.record
    assert "old A1111 hash" in record["model_reason"] and record["seed"] == 2**32 - 1
    assert (record["width"], record["height"]) == (64, 64) and "width 60 rounded to 64 (diffusers needs multiples of 8)" in record["notes"]


def test_sdxl_checkpoint_by_hash(runner_db, tiny_models):
    result = only(run(runner_db, [generation_id(runner_db, "fox.png")], models_dir=str(tiny_models["models"]), config=str(tiny_models["sdxl"])))
    assert (result.record["model_family"], result.record["model"], result.record["scheduler_class"]) == ("sdxl", "tinyXL_base.safetensors", "EulerDiscreteScheduler")


def test_what_cannot_be_honoured_is_listed(runner_db, tiny_models):
    cat = generation_id(runner_db, "cat.png")
    result = only(run(runner_db, [cat], model=str(tiny_models["sd1"]), lora_dir=str(tiny_models["loras"])))
    reasons = result.record["not_honoured"]
    assert "LoRA doesNotExist: not found" in reasons[-1] or any("LoRA doesNotExist: not found" in r for r in reasons)
    assert any("sampler DPM fast has no diffusers equivalent: used the default, DPM++ 2M Karras" in r for r in reasons)
    assert result.record["sampler"] == "k_dpmpp_2m_karras" and "not honoured: LoRA doesNotExist" in result.report()
    missing = run(runner_db, [cat], models_dir=str(tiny_models["loras"]))
    assert missing[0].error and "no checkpoint in" in missing[0].error


def test_same_seed_same_pixels_other_seed_other_pixels(runner_db, tiny_models):
    from spellbook.runner.regenerate import Overrides

    castle = generation_id(runner_db, "castle.png")
    model = {"model": str(tiny_models["sd1"])}
    first, again = only(run(runner_db, [castle], **model)), only(run(runner_db, [castle], **model))
    other = only(run(runner_db, [castle], Overrides(seed=12346), **model))
    assert first.image_path != again.image_path
    assert np.array_equal(pixels(first.image_path), pixels(again.image_path))
    assert np.abs(pixels(first.image_path) - pixels(other.image_path)).max() > 10
    from spellbook.ingest.readers.image_metadata import read_image_metadata

    big = only(run(runner_db, [castle], Overrides(seed=2**63 - 1, steps=2), **model))  # a ComfyUI-sized seed, stored and read back whole
    assert big.record["seed"] == 2**63 - 1 and read_image_metadata(big.image_path)["seed"] == 2**63 - 1


def test_every_sampler_runs(runner_db, tiny_models):
    from spellbook.runner.regenerate import Overrides
    from spellbook.runner.samplers import REMIX_SAMPLERS

    castle = generation_id(runner_db, "castle.png")
    seen = {}
    for sampler in REMIX_SAMPLERS:
        result = only(run(runner_db, [castle], Overrides(sampler=sampler, steps=3), model=str(tiny_models["sd1"]), score=False))
        seen[sampler] = result.record["scheduler_class"]
        assert result.record["overrides"] == {"sampler": sampler, "steps": 3}
        assert np.isfinite(pixels(result.image_path)).all()
    assert len(set(seen.values())) >= 15


def test_remix_overrides(runner_db, tiny_models):
    from spellbook.ingest.readers.image_metadata import read_image_metadata
    from spellbook.runner.regenerate import Overrides

    castle = generation_id(runner_db, "castle.png")
    result = only(run(runner_db, [castle], Overrides(seed=7, steps=4, cfg=3.5, sampler="Euler a", width=72, height=48, negative="grey"),
                      model=str(tiny_models["sd1"])))
    read = read_image_metadata(result.image_path)
    assert (read["seed"], read["steps"], read["cfg"], read["sampler"], read["width"], read["height"], read["negative_prompt"]) == (
        7, 4, 3.5, "k_euler_ancestral", 72, 48, "grey")
    assert result.record["overrides"] == {"seed": 7, "steps": 4, "cfg": 3.5, "sampler": "Euler a", "width": 72, "height": 48, "negative": "grey"}
    from PIL import Image

    assert Image.open(result.image_path).size == (72, 48)


def test_lora_and_embedding_from_files_change_the_image(runner_db, tiny_models):
    castle = generation_id(runner_db, "castle.png")
    model = {"model": str(tiny_models["sd1"]), "score": False}
    plain = only(run(runner_db, [castle], **model))
    assert any("LoRA tinyStyle: not found (no --lora-dir given)" in r for r in plain.record["not_honoured"])
    with_lora = only(run(runner_db, [castle], lora_dir=str(tiny_models["loras"]), **model))
    with_embedding = only(run(runner_db, [castle], embeddings_dir=str(tiny_models["embeddings"]), **model))
    assert with_lora.record["loras"][0]["name"] == "tinyStyle" and with_embedding.record["embeddings"][0]["name"] == "tinyEmbed"
    assert np.abs(pixels(plain.image_path) - pixels(with_lora.image_path)).max() > 0
    assert np.abs(pixels(plain.image_path) - pixels(with_embedding.image_path)).max() > 0
    again = only(run(runner_db, [castle], **model))  # the loaded LoRA is switched off for a prompt without it
    assert np.array_equal(pixels(plain.image_path), pixels(again.image_path))


def test_attention_weights_embeddings_and_clip_skip_in_the_conditioning(tiny_models):
    import torch

    from spellbook.runner.pipelines import load_model
    from spellbook.runner.prompts import PromptEncoder, parse_prompt

    loaded = load_model(str(tiny_models["sd1"]), device="cpu")
    encoder = PromptEncoder(loaded, fast=False)  # compel for everything
    empty = parse_prompt("")
    plain = encoder.encode(parse_prompt("a red castle"), empty)
    reference, _ = loaded.pipe.encode_prompt("a red castle", "cpu", 1, True, "")
    assert torch.equal(plain.embeds, reference)  # unweighted: exactly diffusers' own encoding (so the fast path may use it)
    assert torch.equal(PromptEncoder(loaded).encode(parse_prompt("a red castle"), empty).embeds, reference)
    up = encoder.encode(parse_prompt("a (red:1.5) castle"), empty)
    down = encoder.encode(parse_prompt("a [red] castle"), empty)
    assert (up.embeds - plain.embeds).abs().max() > 1e-3 and (down.embeds - plain.embeds).abs().max() > 1e-3
    long = encoder.encode(parse_prompt(", ".join(["a castle on a hill"] * 20)), parse_prompt("blurry"))
    assert long.embeds.shape[1] == 154 and long.negative_embeds.shape == long.embeds.shape  # past 77 tokens: two chunks

    skipped = encoder.encode(parse_prompt("a red castle"), empty, clip_skip_layers=2)
    assert torch.equal(PromptEncoder(loaded).encode(parse_prompt("a red castle"), empty, clip_skip_layers=2).embeds, skipped.embeds)
    ids = loaded.pipe.tokenizer("a red castle", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = loaded.pipe.text_encoder(ids, output_hidden_states=True)
        inner = getattr(loaded.pipe.text_encoder, "text_model", loaded.pipe.text_encoder)
        a1111 = inner.final_layer_norm(out.hidden_states[-2])  # A1111: hidden_states[-clip_skip], then the final layer norm
    assert torch.allclose(skipped.embeds, a1111, atol=1e-6) and not torch.allclose(skipped.embeds, plain.embeds)

    xl = load_model(str(tiny_models["sdxl"]), device="cpu")  # SDXL: both encoders, the pooled embedding, "" encoded as A1111 does
    slow, fast = PromptEncoder(xl, fast=False).encode(parse_prompt("a fox"), parse_prompt("")), PromptEncoder(xl).encode(parse_prompt("a fox"), parse_prompt(""))
    for a, b in ((slow.embeds, fast.embeds), (slow.negative_embeds, fast.negative_embeds), (slow.pooled, fast.pooled), (slow.negative_pooled, fast.negative_pooled)):
        assert torch.allclose(a, b, atol=1e-6)
    assert slow.embeds.shape[-1] == 32 + 48 and slow.negative_embeds.abs().max() > 0


def test_img2img_from_a_file_and_from_a_generation(runner_db, tiny_models, tmp_path):
    from PIL import Image

    from spellbook.runner.regenerate import Overrides

    castle = generation_id(runner_db, "castle.png")
    sketch = tmp_path / "sketch.png"
    Image.new("RGB", (100, 80), (200, 30, 30)).save(sketch)
    model = {"model": str(tiny_models["sd1"]), "score": False}
    from_file = only(run(runner_db, [castle], Overrides(init_image=str(sketch), strength=0.5, steps=6), **model))
    assert from_file.record["init_image"] == str(sketch) and from_file.record["strength"] == 0.5
    assert Image.open(from_file.image_path).size == (64, 64)
    from_row = only(run(runner_db, [castle], Overrides(init_image=str(generation_id(runner_db, "fox.png"))), **model))
    assert from_row.record["strength"] == 0.75 and any("0.75" in n for n in from_row.record["notes"])
    assert np.abs(pixels(from_file.image_path) - pixels(from_row.image_path)).max() > 0
    from spellbook.ingest.readers.image_metadata import read_image_metadata

    assert read_image_metadata(from_file.image_path)["extra"]["Denoising strength"] == "0.5"
    bad = run(runner_db, [castle], Overrides(init_image=str(diffusiondb_id(runner_db))), **model)  # a DiffusionDB row: its image is not here
    assert "has no image on this machine" in bad[0].error


def test_several_prompts_per_call(runner_db, tiny_models):
    from spellbook.database.connect import connect_readonly
    from spellbook.runner.regenerate import Overrides

    conn = connect_readonly(runner_db)
    ids = [row[0] for row in conn.execute("SELECT id FROM generations WHERE source = 'diffusiondb' AND sampler = 'k_lms' ORDER BY id LIMIT 3")]
    conn.close()
    settings = Overrides(steps=3, width=64, height=64, cfg=7)
    batched = run(runner_db, ids, settings, model=str(tiny_models["sd1"]), batch_size=3, score=False)
    assert [r.record["batch_size"] for r in batched] == [3, 3, 3] and len({r.image_path for r in batched}) == 3
    again = run(runner_db, ids, settings, model=str(tiny_models["sd1"]), batch_size=3, score=False)
    for first, second in zip(batched, again):
        assert np.array_equal(pixels(first.image_path), pixels(second.image_path))
    single = run(runner_db, ids[:1], settings, model=str(tiny_models["sd1"]), score=False)
    assert np.abs(pixels(single[0].image_path) - pixels(batched[0].image_path)).max() <= 2  # per-image seeds: batching keeps each image


def test_diffusiondb_rows_default_to_sd_v1_4_and_say_so(runner_db):
    results = run(runner_db, [diffusiondb_id(runner_db)])
    assert "CompVis/stable-diffusion-v1-4" in results[0].error and "not in the local Hugging Face cache" in results[0].error


def test_clip_similarity_with_the_databases_clip_model(runner_db, tiny_models, tiny_clip):
    from spellbook.embeddings.models import get_model
    from spellbook.embeddings.store import VectorStore
    from spellbook.runner.score import score, source_image
    from spellbook.database.connect import connect_readonly

    store = VectorStore.beside(runner_db)
    store.model_record(get_model(tiny_clip, None, "cpu"))
    store.close()
    conn = connect_readonly(runner_db)
    castle = generation_id(runner_db, "castle.png")
    image = source_image(conn, castle)
    same = score(runner_db, conn, castle, image)
    assert same["phash_distance"] == 0 and same["clip_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert same["clip_model"].endswith("local-dir:tiny-clip") and "/" not in same["clip_model"] and "regenerated with the same settings" in same["score_note"]
    assert score(runner_db, conn, diffusiondb_id(runner_db), image)["source_image"] == 0  # DiffusionDB's images are not on this machine
    conn.close()


def test_cli(runner_db, tiny_models):
    from click.testing import CliRunner

    from spellbook.cli import cli

    castle = generation_id(runner_db, "castle.png")
    out = runner_db.parent / "pngs"
    result = CliRunner().invoke(cli, ["regenerate", str(runner_db), str(castle), "--model", str(tiny_models["sd1"]), "--device", "cpu",
                                      "--steps", "3", "--size", "64x64", "--seed", "9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"generation {castle} -> {out}" in result.output and "regenerated with the same settings: seed 9, 3 steps, DPM++ 2M Karras" in result.output
    assert "not honoured: LoRA tinyStyle: not found" in result.output and len(list(out.glob("*.png"))) == 1
    query = CliRunner().invoke(cli, ["regenerate", str(runner_db), "--query", "lighthouse", "--model", str(tiny_models["sd1"]), "--device", "cpu",
                                     "--steps", "2", "--out", str(out)])
    lighthouse = generation_id(runner_db, "lighthouse.png")
    assert query.exit_code == 0 and f"generation {lighthouse} -> " in query.output and len(list(out.glob("*.png"))) >= 2
    failed = CliRunner().invoke(cli, ["regenerate", str(runner_db), str(diffusiondb_id(runner_db)), "999999", "--device", "cpu"])
    assert failed.exit_code == 1 and "no generation 999999" in failed.output and "CompVis/stable-diffusion-v1-4" in failed.output
    assert CliRunner().invoke(cli, ["regenerate", str(runner_db)]).exit_code == 2
    bad_size = CliRunner().invoke(cli, ["regenerate", str(runner_db), str(castle), "--size", "big"])
    assert bad_size.exit_code == 2 and "WIDTHxHEIGHT" in bad_size.output
