"""The runner's parts that need no pipeline: sampler mapping, prompt syntax, A1111 hashes, infotext,
planning (seeds, sizes, defaults, overrides), checkpoint families."""
from __future__ import annotations

import hashlib
import json

import pytest

from spellbook.runner.checkpoints import addnet_hash, find_checkpoint, find_named_file, normalise_hash, old_model_hash, sha256_file
from spellbook.runner.metadata import infotext, save_png
from spellbook.runner.pipelines import RunnerError, family_of_tensors
from spellbook.runner.prompts import parse_attention, parse_prompt
from spellbook.runner.regenerate import Overrides, RegenerationError, RunnerOptions, plan_generation
from spellbook.runner.samplers import REMIX_SAMPLERS, TARGETS, build_scheduler, known_sampler, plan_sampler
from tests.tiny_diffusion import SD1_SCHEDULER, SDXL_SCHEDULER

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 about diffusers' schedulers

# --- samplers ---------------------------------------------------------------------------------------

# DiffusionDB: its codes and names (every value in the corpus), and what diffusers runs.
DIFFUSIONDB = {
    1: ("ddim", "DDIMScheduler", {}),
    2: ("plms", "PNDMScheduler", {"skip_prk_steps": True}),
    3: ("k_euler", "EulerDiscreteScheduler", {}),
    4: ("k_euler_ancestral", "EulerAncestralDiscreteScheduler", {}),
    5: ("k_heun", "HeunDiscreteScheduler", {}),
    6: ("k_dpm_2", "KDPM2DiscreteScheduler", {}),
    7: ("k_dpm_2_ancestral", "KDPM2AncestralDiscreteScheduler", {}),
    8: ("k_lms", "LMSDiscreteScheduler", {}),
}


@pytest.mark.parametrize("code", sorted(DIFFUSIONDB))
def test_every_diffusiondb_sampler(code):
    name, scheduler, config = DIFFUSIONDB[code]
    for spelling in (code, str(code), name):
        plan = plan_sampler(spelling)
        assert (plan.name, plan.scheduler, plan.config, plan.exact, plan.notes) == (name, scheduler, config, True, [])
    built = build_scheduler(plan_sampler(code), SD1_SCHEDULER)
    assert type(built).__name__ == scheduler
    assert built.config.beta_schedule == "scaled_linear" and built.config.steps_offset == 1  # the model's own schedule carries over
    if scheduler == "PNDMScheduler":
        assert built.config.skip_prk_steps is True


def test_diffusiondb_code_9_is_others_and_falls_back():
    plan = plan_sampler(9)
    assert (plan.name, plan.schedule, plan.scheduler, plan.exact) == ("k_dpmpp_2m", "karras", "DPMSolverMultistepScheduler", False)
    assert "used the default, DPM++ 2M Karras" in plan.notes[0]


A1111 = [
    # (Sampler, Schedule type) as A1111 writes them -> (scheduler, options, schedule)
    ("Euler a", None, "EulerAncestralDiscreteScheduler", {}, None),
    ("Euler", None, "EulerDiscreteScheduler", {}, None),
    ("LMS", None, "LMSDiscreteScheduler", {}, None),
    ("LMS Karras", None, "LMSDiscreteScheduler", {"use_karras_sigmas": True}, "karras"),
    ("Heun", None, "HeunDiscreteScheduler", {}, None),
    ("DPM2", None, "KDPM2DiscreteScheduler", {}, None),
    ("DPM2 a Karras", None, "KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}, "karras"),
    ("DPM++ 2M", None, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, None),
    ("DPM++ 2M Karras", None, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}, "karras"),
    # A1111 1.9+: the schedule is its own field
    ("DPM++ 2M", "Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}, "karras"),
    ("DPM++ 2M", "Automatic", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}, "karras"),
    ("DPM++ 2M", "Uniform", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, None),
    ("DPM++ 2M SDE", "Exponential", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_exponential_sigmas": True}, "exponential"),
    ("DPM++ 2M SDE Karras", None, "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}, "karras"),
    ("DPM++ 2M SDE Heun", "Exponential", "DPMSolverMultistepScheduler",
     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun", "use_exponential_sigmas": True}, "exponential"),
    ("DPM++ 3M SDE", "Karras", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "use_karras_sigmas": True}, "karras"),
    ("DPM++ SDE", None, "DPMSolverSDEScheduler", {"noise_sampler_seed": None}, None),
    ("DPM++ SDE", "Karras", "DPMSolverSDEScheduler", {"noise_sampler_seed": None, "use_karras_sigmas": True}, "karras"),
    ("Euler", "Beta", "EulerDiscreteScheduler", {"use_beta_sigmas": True}, "beta"),
    ("Euler", "SGM Uniform", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, "sgm_uniform"),
    ("UniPC", None, "UniPCMultistepScheduler", {}, None),
    ("DDIM", None, "DDIMScheduler", {}, None),
    ("PLMS", None, "PNDMScheduler", {"skip_prk_steps": True}, None),
    ("LCM", None, "LCMScheduler", {}, None),
]


@pytest.mark.parametrize("sampler, schedule, scheduler, config, chosen", A1111, ids=[f"{a}+{b}" for a, b, *_ in A1111])
def test_a1111_names_and_schedule_types(sampler, schedule, scheduler, config, chosen):
    plan = plan_sampler(sampler, schedule)
    assert (plan.scheduler, plan.config, plan.schedule, plan.exact) == (scheduler, config, chosen, True)
    assert type(build_scheduler(plan, SD1_SCHEDULER, seed=3)).__name__ == scheduler


def test_what_diffusers_cannot_do_is_said():
    ancestral = plan_sampler("Euler a", "Karras")
    assert ancestral.scheduler == "EulerAncestralDiscreteScheduler" and not ancestral.exact
    assert "EulerAncestralDiscreteScheduler has no such option" in ancestral.notes[0]
    ays = plan_sampler("Euler", "Align Your Steps")
    assert not ays.exact and "Align Your Steps: not available" in ays.notes[0]
    two_s = plan_sampler("DPM++ 2S a")
    assert two_s.scheduler == "DPMSolverSinglestepScheduler" and not two_s.exact and "closest" in two_s.notes[0]
    for unknown in ("DPM fast", "DPM adaptive", "Restart", "res_multistep", "no such sampler"):
        plan = plan_sampler(unknown)
        assert plan.name == "k_dpmpp_2m" and plan.schedule == "karras" and not plan.exact
        assert f"sampler {unknown}" in plan.notes[0] and "DPM++ 2M Karras" in plan.notes[0]
    assert "no sampler recorded" in plan_sampler(None).notes[0]


# ComfyUI (comfy/samplers.py): every sampler_name, with its scheduler values.
COMFYUI_SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
    "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
    "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc",
    "uni_pc_bh2",
]
COMFYUI_SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta", "linear_quadratic", "kl_optimal"]
COMFYUI_EXPECTED = {
    "euler": "EulerDiscreteScheduler", "euler_ancestral": "EulerAncestralDiscreteScheduler", "heun": "HeunDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler", "dpm_2_ancestral": "KDPM2AncestralDiscreteScheduler", "lms": "LMSDiscreteScheduler",
    "dpmpp_sde": "DPMSolverSDEScheduler", "dpmpp_sde_gpu": "DPMSolverSDEScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_sde": "DPMSolverMultistepScheduler", "dpmpp_2m_sde_gpu": "DPMSolverMultistepScheduler", "dpmpp_3m_sde": "DPMSolverMultistepScheduler",
    "dpmpp_3m_sde_gpu": "DPMSolverMultistepScheduler", "dpmpp_2m_sde_heun": "DPMSolverMultistepScheduler", "dpmpp_2m_sde_heun_gpu": "DPMSolverMultistepScheduler",
    "ddpm": "DDPMScheduler", "lcm": "LCMScheduler", "deis": "DEISMultistepScheduler", "sa_solver": "SASolverScheduler", "sa_solver_pece": "SASolverScheduler", "ddim": "DDIMScheduler",
    "uni_pc": "UniPCMultistepScheduler", "uni_pc_bh2": "UniPCMultistepScheduler",
}


@pytest.mark.parametrize("sampler", COMFYUI_SAMPLERS)
def test_every_comfyui_sampler(sampler):
    for schedule in COMFYUI_SCHEDULERS:
        plan = plan_sampler(sampler, schedule)
        if sampler in COMFYUI_EXPECTED:
            assert plan.scheduler == COMFYUI_EXPECTED[sampler], (sampler, schedule)
        else:  # no diffusers port: its base sampler or the stated default, and a note either way
            assert not plan.exact and plan.notes
        assert plan.exact or plan.notes  # never a silent approximation
    assert type(build_scheduler(plan_sampler(sampler, "karras"), SDXL_SCHEDULER, seed=1)).__name__ == plan.scheduler
    assert plan_sampler("dpmpp_2m", "karras").config["use_karras_sigmas"] is True
    assert plan_sampler("dpmpp_2m", "normal").config == {"algorithm_type": "dpmsolver++", "solver_order": 2}


def test_remix_choices_are_known_without_diffusers():
    import subprocess
    import sys

    assert all(known_sampler(name) for name in REMIX_SAMPLERS) and not known_sampler("DPM fast")
    # The web process checks names without importing diffusers (it would pull torch into the server)
    code = "import sys; from spellbook.runner.samplers import known_sampler; known_sampler('DPM++ 2M Karras'); print('diffusers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_every_target_is_a_diffusers_scheduler():
    import diffusers

    for name, target in TARGETS.items():
        assert hasattr(diffusers, target.scheduler), name


# --- prompt syntax ----------------------------------------------------------------------------------

ATTENTION = {
    # A1111's own examples (modules/prompt_parser.py, parse_prompt_attention)
    "normal text": [("normal text", 1.0)],
    "an (important) word": [("an ", 1.0), ("important", 1.1), (" word", 1.0)],
    "(unbalanced": [("unbalanced", 1.1)],
    "\\(literal\\]": [("(literal]", 1.0)],
    "(unnecessary)(parens)": [("unnecessaryparens", 1.1)],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
        ("sky", 1.4641000000000006), (".", 1.1),
    ],
    "[faded]": [("faded", 1 / 1.1)],
    "((masterpiece)), best quality": [("masterpiece", 1.2100000000000002), (", best quality", 1.0)],
}


@pytest.mark.parametrize("text", list(ATTENTION))
def test_a1111_attention_syntax(text):
    parsed = parse_attention(text)
    assert [part for part, _ in parsed] == [part for part, _ in ATTENTION[text]]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in ATTENTION[text]])


def test_lora_tags_editing_and_break():
    parsed = parse_prompt("a castle <lora:tinyStyle:0.8>, [day:night:0.75], [cat|dog] BREAK (sky:1.2) <hypernet:old:1> <lora:two:0.5:0.2>", steps=20)
    assert [(t.kind, t.name, t.weight) for t in parsed.networks] == [("lora", "tinyStyle", 0.8), ("hypernet", "old", 1.0), ("lora", "two", 0.5)]
    assert "<lora" not in parsed.text and "day" in parsed.text and "night" not in parsed.text and "cat" in parsed.text
    reasons = " | ".join(parsed.not_honoured)
    assert "prompt editing [day:night:0.75]" in reasons and "alternation [cat|dog]" in reasons and "BREAK" in reasons
    assert "<hypernet:old:1>: hypernet networks are not supported" in reasons and "<lora:two:0.5:0.2>: separate" in reasons
    assert ("sky", 1.2) in parsed.fragments and parsed.weighted
    assert not parse_prompt("plain words").weighted


# --- hashes -------------------------------------------------------------------------------------------


def test_a1111_hash_rules(tmp_path):
    data = bytes(range(256)) * 8192 + b"tail"  # 2 MiB and a bit: the old hash reads 64 KiB at 1 MiB
    model = tmp_path / "models" / "sub" / "myModel_v1.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(data)
    (tmp_path / "models" / "other.ckpt").write_bytes(b"x" * 100)
    sha = hashlib.sha256(data).hexdigest()
    old = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    assert sha256_file(model) == sha and old_model_hash(model) == old
    assert old_model_hash(tmp_path / "models" / "other.ckpt") == hashlib.sha256(b"").hexdigest()[:8]  # short files hash nothing, as in A1111

    class Cache(dict):
        def get(self, *key):
            return dict.get(self, key)

        def put(self, *entry):
            self[entry[:3]] = entry[3]

    cache = Cache()
    for recorded, rule in ((sha[:10], "sha256"), (sha[:10].upper(), "sha256"), (f"[{old}]", "old hash"), (sha, "sha256")):
        found = find_checkpoint(tmp_path / "models", recorded, cache=cache)
        assert found.path == model and found.matched_by == rule and found.short_hash == sha[:10]
    assert len(cache) == 2  # each file's full sha256 is computed once, however many lookups
    assert find_checkpoint(tmp_path / "models", "0123456789") is None
    assert find_checkpoint(tmp_path / "models", None, "myModel_v1").matched_by == "file name"
    assert normalise_hash("not a hash") is None
    lora = tmp_path / "loras" / "deep" / "Style.safetensors"
    lora.parent.mkdir(parents=True)
    header = json.dumps({"__metadata__": {}}).encode()
    lora.write_bytes(len(header).to_bytes(8, "little") + header + b"tensor bytes")
    assert addnet_hash(lora) == hashlib.sha256(b"tensor bytes").hexdigest()  # the header is not hashed
    assert find_named_file(tmp_path / "loras", "Style") == lora and find_named_file(tmp_path / "loras", "style") == lora
    assert find_named_file(tmp_path / "loras", "nope") is None and find_named_file(None, "Style") is None


def test_checkpoint_families_from_tensor_names():
    assert family_of_tensors({"cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": [77, 768]}) == "sd1"
    assert family_of_tensors({"cond_stage_model.model.token_embedding.weight": [49408, 1024]}) == "sd2"
    assert family_of_tensors({"conditioner.embedders.0.transformer.x": [1], "conditioner.embedders.1.model.positional_embedding": [77, 1280]}) == "sdxl"
    with pytest.raises(RunnerError, match="refiner"):
        family_of_tensors({"conditioner.embedders.0.model.text_projection": [1280, 1280]})
    with pytest.raises(RunnerError, match="not a Stable Diffusion"):
        family_of_tensors({"model.diffusion_model.x": [1]})


# --- infotext -----------------------------------------------------------------------------------------


def test_infotext_reads_back_field_for_field(tmp_path):
    from PIL import Image

    from spellbook.ingest.readers.image_metadata import read_image_metadata

    prompt = 'a "quoted" castle, (red:1.3), <lora:tinyStyle:0.8>\nsecond line: with a colon · ünïcode 城'
    negative = "blurry, low quality\nmore: negatives"
    settings = {"Steps": 150, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": "7.5", "Seed": 2**32 - 1, "Size": "512x768",
                "Model hash": "6ce0161689", "Model": "v1-5-pruned, emaonly", "Clip skip": 2, "Lora hashes": "tinyStyle: 0123456789ab",
                "Version": "spellbook 0.1.0"}
    path = tmp_path / "out.png"
    save_png(Image.new("RGB", (8, 8)), path, infotext(prompt, negative, settings))
    read = read_image_metadata(path)
    assert (read["prompt"], read["negative_prompt"], read["seed"], read["steps"], read["cfg"], read["sampler"], read["width"], read["height"],
            read["model_hash"], read["model"]) == (prompt, negative, 2**32 - 1, 150, 7.5, "k_dpmpp_2m_karras", 512, 768, "6ce0161689",
                                                   "v1-5-pruned, emaonly")
    assert read["extra"]["Clip skip"] == "2" and read["extra"]["Lora hashes"] == "tinyStyle: 0123456789ab"
    assert not list(tmp_path.glob("*.partial"))


# --- planning -------------------------------------------------------------------------------------------


def row(**fields):
    base = {"id": 7, "source": "image-metadata", "prompt": "a castle", "negative_prompt": None, "seed": 42, "steps": 20, "cfg": 7.0,
            "sampler": "k_euler_ancestral", "sampler_original": "Euler a", "width": 512, "height": 512, "model": None, "model_hash": None,
            "generator": "AUTOMATIC1111", "extra": {}}
    return {**base, **fields}


GIVEN = RunnerOptions(model="some/model")


def test_seeds_over_the_full_range():
    assert plan_generation(row(seed=2**32 - 1), options=GIVEN).seed == 2**32 - 1
    big = plan_generation(row(seed=280823642470253), options=GIVEN)  # ComfyUI's 64-bit seeds
    assert big.seed == 280823642470253 and "low 32 bits (1500788589)" in big.notes[0]
    drawn = plan_generation(row(seed=None), options=GIVEN)
    assert 0 <= drawn.seed < 2**32 and drawn.notes[0].startswith(f"no seed recorded: drew seed {drawn.seed}")
    assert plan_generation(row(seed=-1), options=GIVEN).notes[0].startswith("no seed recorded")  # A1111's -1 is "random"
    assert plan_generation(row(), Overrides(seed=2**63 - 1), GIVEN).seed == 2**63 - 1
    with pytest.raises(RegenerationError, match="outside"):
        plan_generation(row(), Overrides(seed=2**63), GIVEN)


def test_sizes_cfg_and_defaults():
    plan = plan_generation(row(width=500, height=333, cfg=500.0), options=GIVEN)
    assert (plan.width, plan.height, plan.cfg) == (504, 336, 500.0)  # CFG outliers are kept
    assert "width 500 rounded to 504" in plan.notes[0] and "height 333 rounded to 336" in plan.notes[1]
    zero = plan_generation(row(cfg=0.0), options=GIVEN)
    assert zero.cfg == 0.0 and "diffusers does no guidance below 1" in zero.not_honoured[0]
    bare = plan_generation(row(steps=None, cfg=None, width=None, height=None, sampler=None, sampler_original=None), options=GIVEN)
    assert (bare.steps, bare.cfg, bare.width) == (20, 7.0, None)  # the size waits for the model family
    assert any("no steps recorded: 20" in n for n in bare.notes) and any("no CFG scale recorded: 7" in n for n in bare.notes)
    assert any("no sampler recorded" in n for n in bare.not_honoured)


def test_overrides_change_one_field_each():
    plan = plan_generation(row(), Overrides(seed=7, steps=30, cfg=4.5, sampler="DPM++ 2M Karras", width=640, height=384, negative="ugly"), GIVEN)
    assert (plan.seed, plan.steps, plan.cfg, plan.sampler.canonical, plan.width, plan.height, plan.negative_prompt) == (
        7, 30, 4.5, "k_dpmpp_2m_karras", 640, 384, "ugly")
    assert plan.overrides == {"seed": 7, "steps": 30, "cfg": 4.5, "sampler": "DPM++ 2M Karras", "width": 640, "height": 384, "negative": "ugly"}
    kept = plan_generation(row(), Overrides(steps=5), GIVEN)
    assert (kept.seed, kept.steps, kept.cfg, kept.sampler.name) == (42, 5, 7.0, "k_euler_ancestral")


def test_recorded_settings_that_are_not_run_are_listed():
    extra = {"Hires upscale": 2, "Hires steps": 10, "Denoising strength": 0.5, "Variation seed": 3, "ADetailer model": "face_yolov8n.pt",
             "VAE": "vae-ft-mse-840000", "Schedule type": "Karras", "Version": "v1.9.4", "Clip skip": 2, "RNG": "CPU"}
    plan = plan_generation(row(extra=extra), options=GIVEN)
    reasons = " | ".join(plan.not_honoured)
    assert "hires fix (Hires upscale: 2, Hires steps: 10)" in reasons
    assert "Variation seed: 3: not applied" in reasons and "ADetailer model: face_yolov8n.pt: not applied" in reasons
    assert "VAE vae-ft-mse-840000: a separate VAE is not loaded" in reasons
    assert "Version" not in reasons and "Schedule type" not in reasons and "Denoising strength" not in reasons  # hires' own strength
    assert plan.clip_skip == 2 and plan.noise_on_device is False  # RNG: CPU
    comfy = plan_generation(row(generator="ComfyUI", extra={"stop_at_clip_layer": -2, "denoise": 0.6, "scheduler": "karras",
                                                            "loras": [{"lora_name": "styles\\tinyStyle.safetensors", "strength_model": 0.7}]}), options=GIVEN)
    assert comfy.clip_skip == 2 and comfy.loras == [("tinyStyle", 0.7)] and comfy.sampler.schedule is None  # Euler a has no Karras option
    assert any("denoise 0.6" in item for item in comfy.not_honoured)


def test_model_choice(tmp_path):
    diffusiondb = plan_generation(row(source="diffusiondb", generator=None))
    assert diffusiondb.model == "CompVis/stable-diffusion-v1-4" and "Stable Diffusion v1.x" in diffusiondb.model_reason
    assert plan_generation(row(), options=RunnerOptions(model="x/y")).model_reason == "given with --model"
    with pytest.raises(RegenerationError, match="made with model realisticVision, hash 15012c538f; no --models-dir"):
        plan_generation(row(model="realisticVision", model_hash="15012c538f"))
    with pytest.raises(RegenerationError, match="no checkpoint in"):
        plan_generation(row(model_hash="15012c538f"), options=RunnerOptions(models_dir=str(tmp_path)))
