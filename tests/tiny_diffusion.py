"""Tiny Stable Diffusion pipelines with random weights, saved to disk the way a real user's are.

diffusers' own tests build pipelines like these (`get_dummy_components`): a small UNet, a VAE with
four blocks (so the latent is 1/8 of the image, as in the real models), 2-layer CLIP text encoders,
and the real CLIP tokenizer (49,408 tokens), whose vocab.json and merges.txt are rebuilt offline
from the BPE file open_clip ships. Each pipeline is saved twice:

- as a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/);
- as one .safetensors checkpoint in the original (CompVis/LDM, A1111) key layout:
  `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*` (SD 1.x) or
  `conditioner.embedders.0.transformer.*` + `conditioner.embedders.1.model.*` (SDXL, OpenCLIP layout).
  diffusers has no diffusers-to-LDM converter in the library (only scripts), so `to_ldm_*` below
  invert the library's own `convert_ldm_*` functions; a test checks the round trip exactly.

Plus a tiny LoRA (kohya/A1111 format, the one people download) and a tiny textual-inversion
embedding (A1111's `.pt` format with `string_to_param`).
"""
from __future__ import annotations

import gzip
import json
import re
from functools import lru_cache
from pathlib import Path

SD1_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
}


# --- the tokenizer ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict, list]:
    """(vocab, merges) of OpenAI's CLIP BPE, rebuilt from open_clip's file exactly as open_clip's
    SimpleTokenizer builds it (same ids: <|startoftext|> 49406, <|endoftext|> 49407)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [token + "</w>" for token in tokens] + ["".join(merge) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)  # transformers 5: merges as tuples


# --- components ----------------------------------------------------------------------------------


def _text_encoder(hidden: int = 32, projection: int | None = None, seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=hidden, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408, max_position_embeddings=77,
        hidden_act="quick_gelu", projection_dim=projection or hidden,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _vae(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[16, 16, 16, 16], in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=8, sample_size=64,
    ).eval()


def sd1_components(seed: int = 0) -> dict:
    import torch
    from diffusers import PNDMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ).eval()
    return {
        "unet": unet, "vae": _vae(seed), "text_encoder": _text_encoder(seed=seed), "tokenizer": clip_tokenizer(),
        "scheduler": PNDMScheduler.from_config(SD1_SCHEDULER), "safety_checker": None, "feature_extractor": None,
        "requires_safety_checker": False,
    }


def sdxl_components(seed: int = 0) -> dict:
    """SDXL's shape: two text encoders (their widths must differ, as CLIP-L's 768 and bigG's 1280 do:
    diffusers' single-file loader tells them apart by width), cross-attention over both, and the
    pooled text embedding plus six size/crop numbers as the added condition (6 * 8 + 32 = 80)."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=80, norm_num_groups=1,
    ).eval()
    return {
        "unet": unet, "vae": _vae(seed), "text_encoder": _text_encoder(seed=seed), "text_encoder_2": _text_encoder(hidden=48, projection=32, seed=seed + 1),
        "tokenizer": clip_tokenizer(), "tokenizer_2": clip_tokenizer(), "scheduler": EulerDiscreteScheduler.from_config(SDXL_SCHEDULER),
    }


def sd1_pipeline(seed: int = 0):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**sd1_components(seed))


def sdxl_pipeline(seed: int = 0):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**sdxl_components(seed))


# --- diffusers -> original (LDM) layout ------------------------------------------------------------

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def to_ldm_unet(state: dict, config) -> dict:
    """The inverse of diffusers' convert_ldm_unet_checkpoint for any block count."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    direct = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    per_block = config["layers_per_block"] + 1
    with_attention = {i for i, kind in enumerate(config["up_block_types"]) if "CrossAttn" in kind}
    out = {}

    def resnet(rest: str) -> str:
        for new, old in _RESNET:
            rest = rest.replace(new, old, 1) if rest.startswith(new) else rest
        return rest

    for key, value in state.items():
        if key in direct:
            out[direct[key]] = value
            continue
        match = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
        mid = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
        if match:
            side, block, part, index, rest = match.group(1), int(match.group(2)), match.group(3), int(match.group(4)), match.group(5)
            if side == "down":
                if part == "downsamplers":
                    out[f"input_blocks.{(block + 1) * per_block}.0.op.{rest.removeprefix('conv.')}"] = value
                else:
                    slot = 1 + block * per_block + index
                    out[f"input_blocks.{slot}.{0 if part == 'resnets' else 1}.{resnet(rest) if part == 'resnets' else rest}"] = value
            else:
                if part == "upsamplers":
                    out[f"output_blocks.{block * per_block + per_block - 1}.{2 if block in with_attention else 1}.{rest}"] = value
                else:
                    slot = block * per_block + index
                    out[f"output_blocks.{slot}.{0 if part == 'resnets' else 1}.{resnet(rest) if part == 'resnets' else rest}"] = value
        elif mid:
            part, index, rest = mid.groups()
            out[f"middle_block.{2 * int(index) if part == 'resnets' else 1}.{resnet(rest) if part == 'resnets' else rest}"] = value
        else:
            raise KeyError(f"no LDM name for UNet key {key}")
    return {"model.diffusion_model." + key: value for key, value in out.items()}


def to_ldm_vae(state: dict, config) -> dict:
    """The inverse of diffusers' convert_ldm_vae_checkpoint."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    direct = DIFFUSERS_TO_LDM_MAPPING["vae"]
    blocks = len(config["down_block_types"])
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        if key in direct:
            out[direct[key]] = value
            continue
        key_ldm = key.replace("conv_shortcut", "nin_shortcut")
        if match := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key_ldm):
            out[f"encoder.down.{match.group(1)}.block.{match.group(2)}.{match.group(3)}"] = value
        elif match := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key_ldm):
            out[f"encoder.down.{match.group(1)}.downsample.{match.group(2)}"] = value
        elif match := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key_ldm):
            out[f"decoder.up.{blocks - 1 - int(match.group(1))}.block.{match.group(2)}.{match.group(3)}"] = value
        elif match := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key_ldm):
            out[f"decoder.up.{blocks - 1 - int(match.group(1))}.upsample.{match.group(2)}"] = value
        elif match := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key_ldm):
            out[f"{match.group(1)}.mid.block_{int(match.group(2)) + 1}.{match.group(3)}"] = value
        elif match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", key_ldm):
            weight = value.reshape(*value.shape, 1, 1) if value.ndim == 2 else value  # LDM's are 1x1 convolutions
            out[f"{match.group(1)}.mid.attn_1.{attention[match.group(2)]}.{match.group(3)}"] = weight
        else:
            raise KeyError(f"no LDM name for VAE key {key}")
    return {"first_stage_model." + key: value for key, value in out.items()}


def to_open_clip(state: dict) -> dict:
    """A transformers CLIPTextModelWithProjection in OpenCLIP's layout (SDXL's second encoder)."""
    import torch

    out, qkv = {}, {}
    for key, value in state.items():
        if key == "text_model.embeddings.position_ids":
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        named = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
                 "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                 "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
        if key in named:
            out[named[key]] = value
            continue
        match = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.*)", key)
        layer, rest = match.group(1), match.group(2)
        if part := re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)", rest):
            qkv.setdefault((layer, part.group(2)), {})[part.group(1)] = value
            continue
        rest = (rest.replace("self_attn.out_proj", "attn.out_proj").replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
                .replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
        out[f"transformer.resblocks.{layer}.{rest}"] = value
    for (layer, kind), parts in qkv.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def single_file_state(pipe) -> dict:
    """The whole pipeline as one original-layout state dict (what A1111 and Civitai call a checkpoint)."""
    state = {**to_ldm_unet(pipe.unet.state_dict(), pipe.unet.config), **to_ldm_vae(pipe.vae.state_dict(), pipe.vae.config)}
    # Checkpoints name CLIP-L's weights text_model.* (transformers >= 5.6 dropped that level in CLIPTextModel)
    text = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in pipe.text_encoder.state_dict().items()
            if not k.endswith("position_ids")}
    if getattr(pipe, "text_encoder_2", None) is not None:
        state.update({"conditioner.embedders.0.transformer." + k: v for k, v in text.items()})
        state.update({"conditioner.embedders.1.model." + k: v for k, v in to_open_clip(pipe.text_encoder_2.state_dict()).items()})
    else:
        state.update({"cond_stage_model.transformer." + k: v for k, v in text.items()})
    return {key: value.detach().contiguous().clone() for key, value in state.items()}


def save_single_file(pipe, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(single_file_state(pipe), str(path))
    return path


# --- a LoRA and an embedding ------------------------------------------------------------------------


def save_kohya_lora(pipe, path: Path, rank: int = 4, scale: float = 0.5, seed: int = 1) -> Path:
    """A LoRA in kohya's format (lora_unet_* / lora_te_* keys with .lora_down/.lora_up/.alpha), the
    kind A1111 reads from models/Lora: every attention projection of the UNet and the text encoder."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}

    def add(prefix: str, module_name: str, linear):
        name = f"{prefix}_{module_name.replace('.', '_')}"
        state[f"{name}.lora_down.weight"] = torch.randn(rank, linear.in_features, generator=generator) * scale
        state[f"{name}.lora_up.weight"] = torch.randn(linear.out_features, rank, generator=generator) * scale
        state[f"{name}.alpha"] = torch.tensor(float(rank))

    for name, module in pipe.unet.named_modules():  # kohya's SD 1.x LoRAs name UNet modules the diffusers way
        if re.search(r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$", name):
            add("lora_unet", name, module)
    for name, module in pipe.text_encoder.named_modules():
        if re.search(r"self_attn\.(q_proj|k_proj|v_proj|out_proj)$", name):
            add("lora_te", name, module)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def save_embedding(pipe, path: Path, vectors: int = 2, seed: int = 2) -> Path:
    """A textual-inversion embedding in A1111's .pt format (string_to_param["*"], vectors x width)."""
    import torch

    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(vectors, width, generator=generator)},
            "name": path.stem, "step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, str(path))
    return path


# --- all of it, once per test session ---------------------------------------------------------------


def build_all(folder: Path) -> dict:
    """Every tiny model the runner's tests load, written under folder: {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    sd1 = sd1_pipeline(seed=0)
    sd1.save_pretrained(folder / "tiny-sd1", safe_serialization=True)
    models = folder / "models"
    save_single_file(sd1, models / "tinySD1_v10.safetensors")
    sdxl = sdxl_pipeline(seed=0)
    sdxl.save_pretrained(folder / "tiny-sdxl", safe_serialization=True)
    save_single_file(sdxl, models / "tinyXL_base.safetensors")
    lora = save_kohya_lora(sd1, folder / "loras" / "tinyStyle.safetensors")
    embedding = save_embedding(sd1, folder / "embeddings" / "tinyEmbed.pt")
    return {
        "sd1": folder / "tiny-sd1", "sdxl": folder / "tiny-sdxl", "models": models,
        "sd1_file": models / "tinySD1_v10.safetensors", "sdxl_file": models / "tinyXL_base.safetensors",
        "loras": lora.parent, "lora": lora, "embeddings": embedding.parent, "embedding": embedding,
    }


if __name__ == "__main__":
    import sys

    print(json.dumps({k: str(v) for k, v in build_all(Path(sys.argv[1])).items()}, indent=1))


# --- pytest fixtures (imported by the runner's test modules) ------------------------------------------

import pytest  # noqa: E402

_BUILT: dict[str, dict] = {}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """Every tiny model, built once per test session however many modules ask."""
    pytest.importorskip("diffusers")
    pytest.importorskip("compel")
    if "models" not in _BUILT:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _BUILT["models"] = build_all(tmp_path_factory.mktemp("tiny-diffusion"))
        finally:
            torch.set_num_threads(threads)
    return _BUILT["models"]


@pytest.fixture
def one_thread():
    """Tiny models on one thread: on a shared 2-core machine two OpenMP threads that wait for each
    other make a 0.07 s image take 8 s."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _picture(seed: int, size: int = 64):
    """A small picture with structure (a gradient and a block), so hashes and CLIP see something."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 4 % 256, y * 4 % 256, (x + y) * 2 % 256], axis=-1).astype(np.uint8)
    top, left = rng.integers(0, size // 2, 2)
    pixels[top : top + size // 3, left : left + size // 3] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels)


def crafted_images(folder: Path, models: dict) -> Path:
    """A1111-style PNGs made for the runner's tests: checkpoint hashes of the tiny models (new and
    old style), a LoRA tag, an embedding, weights, clip skip, a hires fix, a seed at 2^32 - 1."""
    from spellbook.runner.checkpoints import old_model_hash, sha256_file
    from spellbook.runner.metadata import infotext, save_png

    folder.mkdir(parents=True, exist_ok=True)
    sd1, sdxl = sha256_file(models["sd1_file"])[:10], sha256_file(models["sdxl_file"])[:10]
    images = {
        "castle.png": ("a (red:1.3) castle on a hill, <lora:tinyStyle:0.8> tinyEmbed", "blurry, (low quality:1.2)",
                       {"Steps": 6, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7, "Seed": 12345, "Size": "64x64",
                        "Model hash": sd1, "Model": "tinySD1_v10", "Clip skip": 2, "Denoising strength": 0.5, "Hires upscale": 2,
                        "Hires steps": 4, "Version": "v1.9.4"}),
        "lighthouse.png": ("a lighthouse at dusk", None,
                           {"Steps": 5, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 2**32 - 1, "Size": "60x60",
                            "Model hash": old_model_hash(models["sd1_file"]), "Model": "someOtherName"}),
        "fox.png": ("a watercolor fox", "", {"Steps": 4, "Sampler": "Euler", "CFG scale": 5, "Seed": 99, "Size": "64x64",
                                            "Model hash": sdxl, "Model": "tinyXL_base", "Version": "v1.9.4"}),
        "cat.png": ("<lora:doesNotExist:1> a cat", None, {"Steps": 3, "Sampler": "DPM fast", "CFG scale": 7, "Seed": 5, "Size": "64x64",
                                                         "Model hash": sd1, "Version": "v1.9.4"}),
    }
    for index, (name, (prompt, negative, settings)) in enumerate(images.items()):
        save_png(_picture(index), folder / name, infotext(prompt, negative, settings))
    return folder


@pytest.fixture(scope="session")
def runner_db_template(tiny_models, tmp_path_factory) -> Path:
    """A Spellbook database: the crafted images (their files on disk) and the DiffusionDB sample."""
    from tests.conftest import DATA_DIR
    from spellbook.ingest.load import ingest_prompt_files

    if "db" not in _BUILT:  # once per session, however many modules import the fixture
        folder = tmp_path_factory.mktemp("runner-db")
        images = crafted_images(folder / "images", tiny_models)
        db = folder / "spellbook.db"
        summary = ingest_prompt_files(db, [images, DATA_DIR / "prompts" / "diffusiondb_sample_metadata_schema.parquet"])
        assert not summary.failed, summary.report()
        _BUILT["db"] = db
    return _BUILT["db"]


@pytest.fixture
def runner_db(runner_db_template, tmp_path) -> Path:
    """A copy of the template (each test gets its own DB.runner.db and regenerations/)."""
    import shutil

    from spellbook.database.connect import connect

    conn = connect(runner_db_template)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db = tmp_path / "spellbook.db"
    shutil.copy(runner_db_template, db)
    return db


def diffusiondb_id(db: Path) -> int:
    """A DiffusionDB row (its image is not on this machine)."""
    from spellbook.database.connect import connect_readonly

    conn = connect_readonly(db)
    try:
        return conn.execute("SELECT min(id) FROM generations WHERE source = 'diffusiondb'").fetchone()[0]
    finally:
        conn.close()


def generation_id(db: Path, image_name: str) -> int:
    from spellbook.database.connect import connect_readonly

    conn = connect_readonly(db)
    try:
        return conn.execute("SELECT id FROM generations WHERE image_path = ?", (image_name,)).fetchone()[0]
    finally:
        conn.close()
