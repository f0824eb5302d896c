"""read_image_metadata on every generator's format, container and quirk, and on hostile files.

The fixture images in data/fixtures/image_metadata/ were written by make_fixtures.py there, each the
way its tool writes it (the README says whose code was followed); expected.json holds every field
each one must give. Hostile files are built here, in tmp_path.
"""
from __future__ import annotations

import gzip
import io
import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from spellbook.ingest.readers.common import RowRejected
from spellbook.ingest.readers.image_metadata import decode_user_comment, parse_a1111_parameters, read_image_metadata

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "data" / "fixtures" / "image_metadata"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
KEYS = {"prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "sampler_original", "width", "height", "model",
        "model_hash", "generator", "extra"}


def read(name: str) -> dict:
    return read_image_metadata(FIXTURES / name)


# --- every fixture, every field ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED), ids=lambda name: Path(name).name)
def test_every_field_of_every_fixture(name):
    row = read_image_metadata(ROOT / name)
    assert set(row) == KEYS
    assert {key: row[key] for key in KEYS - {"extra"}} == EXPECTED[name]
    assert isinstance(row["extra"], dict)
    json.dumps(row["extra"])  # JSON-serialisable
    assert all(isinstance(key, str) for key in row["extra"])


def test_fixtures_stay_small():
    assert sum(path.stat().st_size for path in FIXTURES.iterdir()) < 300_000


# --- AUTOMATIC1111 and forks ---------------------------------------------------------------------


def test_a1111_png_settings_split_into_columns_and_extra():
    row = read("a1111_v1.10.png")
    assert (row["sampler"], row["sampler_original"]) == ("k_dpmpp_2m_karras", "DPM++ 2M")  # Sampler + Schedule type (A1111 >= 1.9)
    assert row["model_hash"] == "31e35c80fc" and row["generator"] == "AUTOMATIC1111"
    assert row["extra"] == {
        "Schedule type": "Karras", "Denoising strength": "0.35", "Clip skip": "2", "Hires upscale": "1.5", "Hires steps": "12",
        "Hires upscaler": "4x-UltraSharp", "Lora hashes": "add-detail-xl: 9c783c8ce46c, film: 1a2b3c4d5e6f",
        "TI hashes": "easynegative: c74b4e810b03", "Version": "v1.10.1",
    }


@pytest.mark.parametrize("name", ["a1111_v1.9.jpg", "a1111_v1.9.webp"])
def test_a1111_jpeg_and_webp_usercomment_utf16(name):
    row = read(name)
    assert row["prompt"] == "a café terrace at night, 猫" and row["negative_prompt"] == "text"
    assert row["extra"] == {"Schedule type": "Automatic", "Version": "v1.9.4"}


def test_regression_empty_positive_prompt_is_accepted():
    row = read("a1111_empty_prompt.png")  # was rejected: "prompt is empty"
    assert row["prompt"] == "" and row["negative_prompt"] == "lowres, bad anatomy"
    assert (row["seed"], row["steps"], row["sampler"]) == (5, 20, "ddim")


def test_regression_first_pass_size_is_the_generation_size():
    row = read("a1111_first_pass_size.png")  # was 1024x1024, the final size
    assert (row["width"], row["height"]) == (512, 512)
    assert row["extra"]["Size"] == "1024x1024" and row["extra"]["First pass size"] == "512x512"


def test_first_pass_size_zero_uses_a1111s_old_algorithm(tmp_path):
    text = "a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 1024x768, First pass size: 0x0"
    row = read_image_metadata(_png(tmp_path / "old.png", parameters=text))
    assert (row["width"], row["height"]) == (640, 448)  # processing.old_hires_fix_first_pass_dimensions(1024, 768)


def test_regression_crlf_line_ends():
    row = read("a1111_crlf.png")  # was "a red bicycle,\r\nstudio light\r"
    assert row["prompt"] == "a red bicycle,\nstudio light" and row["negative_prompt"] == "people"
    assert row["sampler"] == "k_lms_karras"


def test_regression_quoted_and_json_values():
    text = ('a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, '
            'Lora hashes: "a: 1, b: \\"2\\"", Hashes: {"vae": "x", "model": "y, z"}, '
            'Civitai resources: [{"type":"lora","weight":0.8,"modelName":"A, B"}], Version: v1.10.0')
    settings = parse_a1111_parameters(text)["settings"]
    assert settings["Lora hashes"] == 'a: 1, b: "2"'
    assert settings["Hashes"] == '{"vae": "x", "model": "y, z"}'  # bare JSON kept whole (was cut at the first comma)
    assert settings["Civitai resources"] == '[{"type":"lora","weight":0.8,"modelName":"A, B"}]'
    assert settings["Version"] == "v1.10.0"


def test_size_dash_keys(tmp_path):
    text = "a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size-1: 640, Size-2: 960"
    row = read_image_metadata(_png(tmp_path / "dash.png", parameters=text))
    assert (row["width"], row["height"]) == (640, 960)


def test_settings_line_needs_three_pairs():
    parsed = parse_a1111_parameters("a photo\nstyle: cinematic, light: soft")
    assert parsed["prompt"] == "a photo\nstyle: cinematic, light: soft" and parsed["settings"] == {}


def test_forks_are_told_apart():
    forge = read("forge_flux.png")
    assert forge["generator"] == "Forge" and forge["extra"]["Distilled CFG Scale"] == "3.5" and forge["cfg"] == 1.0
    sdnext = read("sdnext.jpg")
    assert sdnext["generator"] == "SD.Next" and sdnext["extra"]["Backend"] == "Diffusers"


def test_civitai_a1111_resources_as_json():
    row = read("civitai_a1111.jpeg")
    assert row["generator"] == "Civitai"
    resources = row["extra"]["Civitai resources"]
    assert resources[0]["modelName"] == "Pony Diffusion V6 XL" and resources[1]["weight"] == 0.8
    assert row["extra"]["Civitai metadata"] == {"remixOfId": 7788}


def test_a1111_linear_on_megabyte_lines():
    start = time.perf_counter()
    brackets = "Steps: 1, Seed: 2, CFG scale: 3, A: " + "[{" * 300_000
    parse_a1111_parameters("p\n" + brackets)
    parse_a1111_parameters("p\n" + ("x: [1, " * 150_000))
    assert time.perf_counter() - start < 5


# --- ComfyUI -------------------------------------------------------------------------------------


def test_comfyui_sdxl_lora_and_clip_skip():
    row = read("comfyui_sdxl_lora.png")
    assert row["extra"]["stop_at_clip_layer"] == -2 and row["extra"]["scheduler"] == "karras"
    assert row["extra"]["loras"] == [{"lora_name": "add-detail-xl.safetensors", "strength_model": 0.8, "strength_clip": 0.8}]


def test_regression_sampler_custom_advanced():
    row = read("comfyui_flux_custom_advanced.png")  # was "ComfyUI prompt has no KSampler node"
    assert (row["seed"], row["steps"], row["sampler"], row["cfg"]) == (219670278747233, 20, "k_euler", None)
    assert (row["width"], row["height"], row["model"]) == (1024, 768, "flux1-dev.safetensors")
    assert row["extra"]["guidance"] == 3.5 and row["extra"]["scheduler"] == "simple"
    assert row["negative_prompt"] is None  # BasicGuider has no negative


def test_regression_first_pass_and_controlnet_sides():
    row = read("comfyui_hires_controlnet.png")  # was the hires KSampler's settings, and both prompts mixed
    assert row["prompt"] == "portrait of an old sailor, detailed face" and row["negative_prompt"] == "cartoon, deformed"
    assert (row["seed"], row["steps"], row["cfg"], row["sampler"]) == (424242, 25, 7.0, "k_dpmpp_2m_sde_karras")
    assert row["extra"]["later_passes"] == [
        {"sampler_node": "KSampler", "seed": 999, "steps": 12, "cfg": 5.0, "sampler": "euler", "scheduler": "normal", "denoise": 0.45}]


def test_regression_comf_chunks_after_image_data():
    assert read("comfyui_animated.png")["seed"] == 1056302746538841  # was "no generation metadata found"


@pytest.mark.parametrize("name", ["comfyui_saveanimatedwebp.webp", "comfyui_saveimage_plus.jpg", "comfyui_save_image_extended.webp"])
def test_regression_comfy_graphs_in_exif(name):
    row = read(name)  # ComfyUI's WebP saver ("prompt:" in EXIF Model), SaveImage Plus and Save Image Extended (UserComment JSON)
    assert row["generator"] == "ComfyUI" and row["seed"] is not None and row["prompt"]


def test_saver_nodes_writing_a1111_text():
    saver = read("comfyui_image_saver.jpg")
    assert saver["generator"] == "ComfyUI" and saver["sampler"] == "k_dpmpp_2m_karras"  # "dpmpp_2m_karras": name_scheduler
    assert saver["extra"]["Hashes"] == {"model": "31e35c80fc"}
    png = read("comfyui_save_with_metadata.png")  # parameters + prompt: the graph, with the text's hashes
    assert png["model"] == "sd_xl_base_1.0.safetensors" and png["model_hash"] == "31e35c80fc"
    assert png["extra"]["Lora_0 Model name"] == "add-detail-xl"
    assert read("comfyui_save_with_metadata.jpeg")["generator"] == "ComfyUI"


def test_regression_workflow_only():
    row = read("comfyui_workflow_only.png")  # was "no generation metadata found"
    assert (row["prompt"], row["negative_prompt"], row["seed"], row["steps"]) == ("a bowl of ramen, studio photo", "text, watermark", 156680208700286, 20)
    assert row["extra"]["read_from"] == "workflow"


def test_regression_pillow_text_limit(tmp_path):
    """Pillow refuses a zTXt/iTXt that inflates past 1 MiB (PngImagePlugin.MAX_TEXT_CHUNK) and the
    old reader rejected the whole image; a big compressed workflow is ordinary."""
    graph = _small_graph()
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    info.add_text("workflow", json.dumps({"nodes": [], "notes": "x" * 3_000_000}), zip=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "big.png", pnginfo=info)
    assert read_image_metadata(tmp_path / "big.png")["seed"] == 7


def test_comfy_values_through_primitives_and_text_nodes(tmp_path):
    graph = _small_graph()
    graph["20"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a heron"}}
    graph["21"] = {"class_type": "StringConcatenate", "inputs": {"string_a": ["20", 0], "string_b": "ink drawing", "delimiter": ", "}}
    graph["2"]["inputs"]["text"] = ["21", 0]
    graph["22"] = {"class_type": "PrimitiveInt", "inputs": {"value": 1234}}
    graph["3"]["inputs"]["seed"] = ["22", 0]
    row = read_image_metadata(_png(tmp_path / "prim.png", prompt=json.dumps(graph)))
    assert (row["prompt"], row["seed"]) == ("a heron, ink drawing", 1234)


def test_comfy_efficient_loader(tmp_path):
    graph = {
        "1": {"class_type": "Efficient Loader", "inputs": {"ckpt_name": "epic.safetensors", "positive": "a red kite", "negative": "blurry",
                                                           "empty_latent_width": 640, "empty_latent_height": 896, "batch_size": 1}},
        "2": {"class_type": "KSampler (Efficient)", "inputs": {"seed": 42, "steps": 22, "cfg": 6, "sampler_name": "euler", "scheduler": "normal",
                                                               "model": ["1", 0], "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["1", 3]}},
    }
    row = read_image_metadata(_png(tmp_path / "eff.png", prompt=json.dumps(graph)))
    assert (row["prompt"], row["negative_prompt"], row["width"], row["height"], row["model"]) == ("a red kite", "blurry", 640, 896, "epic.safetensors")


def test_comfy_seed_beyond_int64_is_rejected(tmp_path):
    graph = _small_graph()
    graph["3"]["inputs"]["seed"] = 2**64 - 1
    with pytest.raises(RowRejected) as problem:
        read_image_metadata(_png(tmp_path / "seed.png", prompt=json.dumps(graph)))
    assert "seed" in problem.value.reason and problem.value.column == "prompt"


def test_comfy_text_computed_at_run_time(tmp_path):
    graph = _small_graph()
    graph["40"] = {"class_type": "OllamaGenerate", "inputs": {"prompt": "write an image prompt about cats", "model": "llama3"}}
    graph["41"] = {"class_type": "ShowText|pysssss", "inputs": {"text": ["40", 0]}}
    graph["2"]["inputs"]["text"] = ["41", 0]
    workflow = {"nodes": [{"id": 41, "type": "ShowText|pysssss", "widgets_values": [["a fluffy cat asleep on a sofa"]]}], "links": []}
    with_workflow = _png(tmp_path / "llm.png", prompt=json.dumps(graph), workflow=json.dumps(workflow))
    assert read_image_metadata(with_workflow)["prompt"] == "a fluffy cat asleep on a sofa"
    graph["3"]["inputs"]["negative"] = ["2", 0]
    with pytest.raises(RowRejected) as problem:  # the LLM's instruction is no prompt; without the workflow there is none
        read_image_metadata(_png(tmp_path / "llm_only.png", prompt=json.dumps(graph)))
    assert "prompt is missing" in problem.value.reason


def test_comfy_pipe_loader_model(tmp_path):
    graph = {
        "1": {"class_type": "ToBasicPipe", "inputs": {"model": ["2", 0], "clip": ["2", 1], "vae": ["2", 2], "positive": ["3", 0], "negative": ["4", 0]}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "piped.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a koi pond", "clip": ["2", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "murky", "clip": ["2", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 768, "batch_size": 1}},
        "6": {"class_type": "ImpactKSamplerBasicPipe", "inputs": {"basic_pipe": ["1", 0], "seed": 9, "steps": 18, "cfg": 4.5, "sampler_name": "euler",
                                                                  "scheduler": "normal", "denoise": 1, "latent_image": ["5", 0]}},
    }
    row = read_image_metadata(_png(tmp_path / "pipe.png", prompt=json.dumps(graph)))
    assert (row["prompt"], row["negative_prompt"], row["model"], row["steps"], row["width"]) == ("a koi pond", "murky", "piped.safetensors", 18, 768)


# --- the other tools -----------------------------------------------------------------------------


def test_regression_swarmui():
    png = read("swarmui.png")  # was "prompt is missing"
    assert png["extra"]["generation_time"] == "6.11 (prep) and 4.84 (gen) seconds" and png["extra"]["swarm_version"] == "0.9.3.1"
    jpg = read("swarmui.jpg")  # UTF-16LE UserComment, numbers as text
    assert (jpg["prompt"], jpg["seed"], jpg["steps"], jpg["cfg"]) == ("a photo of a cat, ねこ", 42, 25, 4.5)


def test_regression_ruinedfooocus():
    row = read("ruinedfooocus.png")  # was "prompt is missing"
    assert row["generator"] == "RuinedFooocus" and row["extra"]["loras"] == [["4852686128", "0.1 - sd_xl_offset_example-lora_1.0.safetensors"]]


def test_fooocus_both_schemes():
    jpg = read("fooocus.jpg")  # JSON in IFD0 UserComment, Software and MakerNote beside it
    assert jpg["seed"] == 12345678901234567 and jpg["extra"]["performance"] == "Speed"
    a1111 = read("fooocus_a1111_scheme.png")  # the A1111 scheme: the prompt is "Raw prompt", as Fooocus reads it back
    assert a1111["prompt"] == "a smiling goldfish" and a1111["generator"] == "Fooocus"


def test_regression_civitai_comfy_json_in_usercomment():
    row = read("civitai_comfy.jpeg")  # was "prompt is missing"
    assert row["generator"] == "Civitai" and row["extra"]["workflowId"] == "txt2img"
    upscale = read("civitai_upscale.jpeg")  # no sampler in the graph: extraMetadata gives the settings
    assert (upscale["prompt"], upscale["seed"], upscale["cfg"]) == ("photography, closeup, an eye of a dragon", 1966159266, 3.5)


def test_novelai_v4_captions():
    row = read("novelai_v4.png")
    chars = row["extra"]["v4_prompt"]["caption"]["char_captions"]
    assert chars == [{"char_caption": "girl, pink hair, kimono", "centers": [{"x": 0.5, "y": 0.5}]}]
    assert row["extra"]["noise_schedule"] == "karras" and row["model_hash"] == "4BDE2A90"


def test_regression_novelai_stealth_and_webp():
    for name in ("novelai_stealth.png", "novelai.webp"):  # stealth was read as one A1111 prompt; the WebP was rejected
        row = read(name)
        assert (row["prompt"], row["seed"], row["steps"]) == ("1girl, solo, cherry blossoms, masterpiece", 1609577208, 28)
        assert row["generator"] == "NovelAI"


def test_regression_tools_that_were_rejected():
    assert read("drawthings.png")["extra"]["seed_mode"] == "Scale Alike"
    assert read("easydiffusion.png")["extra"]["use_vae_model"] == "vae-ft-mse-840000-ema-pruned"
    assert read("tensorart.png")["model"] == "WAI-Nsfw-Illustrious-16"
    assert read("hf_space_animagine.png")["steps"] == 28


def test_other_formats_through_pillow(tmp_path):
    path = tmp_path / "comment.gif"
    Image.new("P", (8, 8)).save(path, comment=b"a gif cat\nSteps: 10, Sampler: Euler, CFG scale: 5, Seed: 3, Size: 256x256")
    row = read_image_metadata(path)
    assert (row["prompt"], row["seed"], row["width"]) == ("a gif cat", 3, 256)


def test_unknown_json_read_by_common_key_names(tmp_path):
    data = {"prompt": "a lantern", "negative_prompt": "dark", "seed": 3, "steps": 4, "cfg_scale": 5, "sampler": "Euler a",
            "size": "640x480", "model": "m", "app": "SomeUI"}
    row = read_image_metadata(_png(tmp_path / "generic.png", parameters=json.dumps(data)))
    assert (row["prompt"], row["negative_prompt"], row["seed"], row["steps"], row["cfg"]) == ("a lantern", "dark", 3, 4, 5.0)
    assert (row["width"], row["height"], row["model"], row["generator"], row["extra"]) == (640, 480, "m", None, {"app": "SomeUI"})


def test_a_cameras_user_comment_is_no_prompt(tmp_path):
    exif = Image.Exif()
    exif[0x9286] = "Taken on holiday"
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg", exif=exif)
    with pytest.raises(RowRejected) as problem:
        read_image_metadata(tmp_path / "photo.jpg")
    assert "no generation metadata" in problem.value.reason and "plain text" in problem.value.reason


# --- EXIF text -----------------------------------------------------------------------------------


def test_decode_user_comment_encodings():
    assert decode_user_comment(b"UNICODE\0" + "a cat".encode("utf-16-be")) == "a cat"
    assert decode_user_comment(b"UNICODE\0" + "a cat".encode("utf-16-le")) == "a cat"
    assert decode_user_comment(b"UNICODE\0" + "猫猫".encode("utf-16-le"), "<") == "猫猫"  # no ASCII: the TIFF byte order decides
    assert decode_user_comment(b"UNICODE\0" + "猫猫".encode("utf-16-be"), ">") == "猫猫"
    assert decode_user_comment(b"ASCII\0\0\0caf\xc3\xa9\0") == "café"
    assert decode_user_comment(b'{"prompt": 1}') == '{"prompt": 1}'
    assert decode_user_comment("text\0") == "text"


# --- hostile files -------------------------------------------------------------------------------


def test_regression_stealth_gzip_bomb_is_capped(tmp_path):
    """The stealth payload was gunzipped with no cap; 64 MiB of zeros must cost the cap, no more."""
    payload = _gzip_zeros(64 * 2**20)
    path = _stealth_rgb(tmp_path / "bomb.png", b"stealth_rgbcomp", payload)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(RowRejected) as problem:
        read_image_metadata(path)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert problem.value.column == "stealth" and "decompresses to more than" in problem.value.reason
    assert elapsed < 10 and peak < 48 * 2**20


def test_ztxt_bomb_is_skipped_with_a_reason(tmp_path):
    chunk = b"parameters\0\0" + _zlib_zeros(256 * 2**20)
    path = _raw_png(tmp_path / "ztxt.png", [(b"zTXt", chunk)])
    start = time.perf_counter()
    with pytest.raises(RowRejected) as problem:
        read_image_metadata(path)
    assert "decompresses to more than" in problem.value.reason and time.perf_counter() - start < 10


def test_xmp_entities_are_never_expanded(tmp_path):
    entities = "".join(f'<!ENTITY lol{i} "{"&lol%d;" % (i - 1) * 10}">' for i in range(1, 10))
    xmp = (f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY lol0 "lol">{entities}]><x:xmpmeta><rdf:RDF><rdf:Description>'
           "<xmp:CreatorTool>Draw Things</xmp:CreatorTool><exif:UserComment><rdf:Alt><rdf:li>&lol9;</rdf:li></rdf:Alt></exif:UserComment>"
           "<dc:description><rdf:Alt><rdf:li>&lol9;&#xA;Steps: 2, Seed: 3, Guidance Scale: 4</rdf:li></rdf:Alt></dc:description>"
           "</rdf:Description></rdf:RDF></x:xmpmeta>")
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    Image.new("RGB", (8, 8)).save(tmp_path / "lol.png", pnginfo=info)
    start = time.perf_counter()
    row = read_image_metadata(tmp_path / "lol.png")
    assert row["prompt"] == "&lol9;" and row["steps"] == 2  # the reference stays as written
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("text", ["[" * 200_000, '{"a":' * 200_000, '{"3": {"class_type": "KSampler", "inputs": ' + "[" * 100_000])
def test_deeply_nested_json(tmp_path, text):
    with pytest.raises(RowRejected) as problem:
        read_image_metadata(_png(tmp_path / "deep.png", prompt=text))
    assert problem.value.column == "prompt" and "JSON" in problem.value.reason


def test_cyclic_graph_terminates(tmp_path):
    graph = _small_graph()
    graph["30"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["31", 0], "conditioning_2": ["2", 0]}}
    graph["31"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["30", 0], "conditioning_2": ["30", 0]}}
    graph["3"]["inputs"]["positive"] = ["30", 0]
    graph["5"]["inputs"]["samples"] = ["3", 0]  # a latent cycle too
    graph["3"]["inputs"]["latent_image"] = ["5", 0]
    graph["5"]["class_type"] = "LatentUpscale"
    row = read_image_metadata(_png(tmp_path / "cycle.png", prompt=json.dumps(graph)))
    assert row["prompt"] == "a heron"


def test_huge_graph_in_bounded_time(tmp_path):
    graph = _small_graph()
    previous = ["2", 0]
    for index in range(100, 30_100):  # a 30,000-node conditioning chain
        graph[str(index)] = {"class_type": "ConditioningSetTimestepRange", "inputs": {"conditioning": previous, "start": 0, "end": 1}}
        previous = [str(index), 0]
    graph["3"]["inputs"]["positive"] = previous
    latent = ["4", 0]
    for index in range(40_000, 40_300):  # 300 chained passes
        graph[str(index)] = {"class_type": "KSampler", "inputs": {"seed": index, "steps": 1, "cfg": 1, "sampler_name": "euler", "scheduler": "normal",
                                                                  "model": ["1", 0], "positive": previous, "negative": ["2", 0], "latent_image": latent}}
        latent = [str(index), 0]
    start = time.perf_counter()
    try:
        row = read_image_metadata(_png(tmp_path / "huge.png", prompt=json.dumps(graph)))
        assert row["prompt"] == "a heron"
    except RowRejected as problem:
        assert "bounded time" in problem.reason
    assert time.perf_counter() - start < 20


def test_damaged_containers_are_rejections_not_crashes(tmp_path):
    cases = {
        "random.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
        "truncated.png": (FIXTURES / "a1111_v1.10.png").read_bytes()[:80],
        "bad_exif.jpg": b"\xff\xd8\xff\xe1\x00\x20Exif\0\0MM\0*\0\0\0\x08\xff\xff" + b"\x01" * 14 + b"\xff\xd9",
        "long_segment.jpg": b"\xff\xd8\xff\xe1\xff\xffExif\0\0MM",
        "riff.webp": b"RIFF\xff\xff\xff\xffWEBPEXIF\xff\xff\xff\x7fMM",
        "noise.bin": bytes(range(256)) * 8,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(RowRejected):
            read_image_metadata(tmp_path / name)
    with pytest.raises(RowRejected) as problem:
        read_image_metadata(tmp_path / "noise.bin")
    assert "not an image" in problem.value.reason


def test_extra_is_bounded(tmp_path):
    data = {"prompt": "a cat", "base_model": "m", "seed": 1, "full_prompt": ["x" * 20_000], "sharpness": 2}
    row = read_image_metadata(_png(tmp_path / "big.png", parameters=json.dumps(data)))
    assert "full_prompt" not in row["extra"] and row["extra"]["sharpness"] == 2


# --- helpers -------------------------------------------------------------------------------------


def _small_graph() -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a heron", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20, "cfg": 7, "sampler_name": "euler", "scheduler": "normal",
                                                   "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0]}},
    }


def _png(path, **text):
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8), "white").save(path, pnginfo=info)
    return path


def _raw_png(path, chunks) -> Path:
    """A valid 1x1 PNG with extra chunks before IDAT, written by hand (Pillow would refuse some)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    for kind, data in chunks:
        body += chunk(kind, data)
    body += chunk(b"IDAT", zlib.compress(b"\0\0\0\0")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _zlib_zeros(size: int) -> bytes:
    deflater = zlib.compressobj(9)
    block = b"\0" * 2**20
    return b"".join(deflater.compress(block) for _ in range(size // len(block))) + deflater.flush()


def _gzip_zeros(size: int) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as handle:
        block = b"\0" * 2**20
        for _ in range(size // len(block)):
            handle.write(block)
    return buffer.getvalue()


def _stealth_rgb(path, signature: bytes, payload: bytes) -> Path:
    """Hide a payload in the low bits of R, G, B, column by column, as the stealth extension does."""
    bits = "".join(f"{byte:08b}" for byte in signature) + f"{len(payload) * 8:032b}" + "".join(f"{byte:08b}" for byte in payload)
    side = 8
    while side * side * 3 < len(bits):
        side += 8
    values = bytearray(b"\xc8" * (side * side * 3))
    digits = bits.encode()
    values[: len(digits)] = bytes((value & 0xFE) | (digit - 48) for value, digit in zip(values[: len(digits)], digits))
    column_major = Image.frombytes("RGB", (side, side), bytes(values))  # rows of this are columns of the image
    column_major.transpose(Image.Transpose.TRANSPOSE).save(path)
    return path
