"""What `spellbook regenerate` costs over a bare diffusers call with the same pipeline and settings.

Both run on the one pipeline object, loaded before timing starts (as in the worker): the bare call is
`pipe(prompt=..., negative_prompt=..., ...)` with the same scheduler and a seeded CPU generator;
ours is the library call behind the CLI (`spellbook.runner.regenerate.regenerate`): reading the row,
planning, compel's prompt encoding, the same denoising, the PNG with its infotext, the
regenerations row. Calls alternate; the first of each is a warm-up. Goal: overhead under 3%.

    python bench/regenerate.py                       # CPU: a tiny SD 1.x pipeline at 64x64 (built in bench/cache)
    python bench/regenerate.py --shape sd15 --size 64 --steps 10   # CPU: SD 1.5's real architecture, random weights
    python bench/regenerate.py --device cuda --dtype float16 --model v1-5-pruned-emaonly.safetensors --config SD15_FOLDER \\
        --size 512 --steps 50                        # a GPU: it/s and seconds per image against the bare call
    python bench/regenerate.py --device cuda --dtype float16 --model sd_xl_base_1.0.safetensors --config SDXL_FOLDER --size 1024 --steps 30

Prints the figures and one `RESULT ...` line.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.append(str(BENCH_DIR.parent))  # the checkout, for tests.tiny_diffusion's builders
CACHE = BENCH_DIR / "cache" / "regenerate"
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed, sharp focus"
NEGATIVE = "blurry, low quality"


def sd15_shaped(folder: Path) -> Path:
    """A pipeline with Stable Diffusion 1.5's real component configs (860M-parameter UNet, CLIP
    ViT-L text encoder, the KL VAE) and random weights: its cost per step is the real one."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny_diffusion import SD1_SCHEDULER, clip_tokenizer

    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.x's UNet
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                        max_position_embeddings=77, vocab_size=49408, bos_token_id=49406, eos_token_id=49407,
                                        pad_token_id=49407, hidden_act="quick_gelu"))
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), scheduler=PNDMScheduler.from_config(SD1_SCHEDULER),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny(folder: Path) -> Path:
    from tests.tiny_diffusion import sd1_pipeline

    if not (folder / "model_index.json").exists():
        sd1_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def bench_database(folder: Path, steps: int, width: int, height: int, sampler: str, cfg: float, seed: int) -> tuple[Path, int]:
    """A Spellbook database with one A1111 image whose settings are the benchmark's."""
    from PIL import Image

    from spellbook.database.connect import connect_readonly
    from spellbook.ingest.load import ingest_prompt_files
    from spellbook.runner.metadata import infotext, save_png

    images = folder / "images"
    images.mkdir(parents=True)
    text = infotext(PROMPT, NEGATIVE, {"Steps": steps, "Sampler": sampler, "CFG scale": cfg, "Seed": seed, "Size": f"{width}x{height}",
                                       "Version": "v1.9.4"})
    save_png(Image.new("RGB", (8, 8)), images / "bench.png", text)
    db = folder / "bench.db"
    ingest_prompt_files(db, [images])
    conn = connect_readonly(db)
    generation_id = conn.execute("SELECT id FROM generations").fetchone()[0]
    conn.close()
    return db, generation_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="hub id, diffusers folder or checkpoint (default: a pipeline built in bench/cache)")
    parser.add_argument("--shape", choices=["tiny", "sd15"], default="tiny", help="without --model: the tiny test pipeline or SD 1.5's shape")
    parser.add_argument("--config", default=None, help="diffusers folder whose configuration a single-file --model uses")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--size", default=None, help="WxH or one number (default 64 on the CPU, 512 on a GPU)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each (after one warm-up each)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: 1 on a shared 2-core machine)")
    args = parser.parse_args()

    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads or 1)  # two spinning OpenMP threads on a shared 2-core machine cost 100x
    size = args.size or ("512" if args.device != "cpu" else "64")
    width, height = (int(part) for part in (size.split("x") if "x" in size else (size, size)))
    CACHE.mkdir(parents=True, exist_ok=True)
    model = args.model or str({"tiny": tiny, "sd15": sd15_shaped}[args.shape](CACHE / f"{args.shape}-pipeline"))

    from spellbook.runner.pipelines import load_model
    from spellbook.runner.regenerate import Overrides, RunnerOptions, plan_generation, regenerate
    from spellbook.runner.samplers import build_scheduler

    work = Path(tempfile.mkdtemp(prefix="spellbook-bench-regenerate-"))
    try:
        seed = 1234
        db, generation_id = bench_database(work, args.steps, width, height, args.sampler, args.cfg, seed)
        options = RunnerOptions(model=model, config=args.config, device=args.device, dtype=args.dtype, out=str(work / "out"),
                                compile=args.compile, batch_size=args.batch_size, score=False)
        started = time.perf_counter()
        loaded = load_model(model, args.device, args.dtype, args.config, compile=args.compile)
        load_seconds = time.perf_counter() - started
        pipe = loaded.pipe
        from spellbook.runner.regenerate import Runner

        plan = plan_generation(Runner(db, options).row(generation_id), Overrides(), options)
        ids = [generation_id] * args.batch_size

        def sync():
            if args.device == "cuda":
                torch.cuda.synchronize()

        def bare():
            pipe.scheduler = build_scheduler(plan.sampler, loaded.scheduler_config, seed=seed)
            sync()
            began = time.perf_counter()
            images = pipe(prompt=[PROMPT] * args.batch_size, negative_prompt=[NEGATIVE] * args.batch_size, num_inference_steps=args.steps,
                          guidance_scale=args.cfg, height=height, width=width, output_type="pil",
                          generator=[torch.Generator("cpu").manual_seed(seed) for _ in ids]).images
            sync()
            return time.perf_counter() - began, images[0]

        def ours():
            sync()
            began = time.perf_counter()
            results = regenerate(db, ids, Overrides(), options)
            sync()
            assert all(r.error is None for r in results), results[0].error
            return time.perf_counter() - began, results[0].image_path

        bare_times, our_times = [], []
        _, bare_image = bare()
        _, our_path = ours()  # warm-ups: compile, caches, the row's first read
        for _ in range(args.repeats):
            bare_times.append(bare()[0])
            our_times.append(ours()[0])
        import numpy as np
        from PIL import Image

        same = np.array_equal(np.asarray(bare_image), np.asarray(Image.open(our_path).convert("RGB")))
        bare_s, ours_s = statistics.median(bare_times) / args.batch_size, statistics.median(our_times) / args.batch_size
        overhead = (ours_s - bare_s) / bare_s * 100
        its_bare, its_ours = args.steps * args.batch_size / statistics.median(bare_times), args.steps * args.batch_size / statistics.median(our_times)
        name = Path(model).name if Path(model).exists() else model
        print(f"# {name} ({loaded.family}, {loaded.source}) on {args.device} {loaded.dtype}, {width}x{height}, {args.steps} steps of {args.sampler}, "
              f"CFG {args.cfg:g}, batch {args.batch_size}{', torch.compile' if args.compile else ''}; loaded in {load_seconds:.1f} s")
        print(f"# bare diffusers call: {bare_s:.3f} s/image, {its_bare:.1f} it/s   (median of {args.repeats}: {', '.join(f'{t:.3f}' for t in bare_times)})")
        print(f"# spellbook regenerate: {ours_s:.3f} s/image, {its_ours:.1f} it/s   (median of {args.repeats}: {', '.join(f'{t:.3f}' for t in our_times)})")
        print(f"# overhead {overhead:+.1f}% ({(ours_s - bare_s) * 1000:+.1f} ms per image); identical pixels: {same}")
        print(f"RESULT overhead_pct={overhead:.2f} ours_s_per_image={ours_s:.4f} bare_s_per_image={bare_s:.4f} its_ours={its_ours:.2f} "
              f"its_bare={its_bare:.2f} same_pixels={int(same)} device={args.device} dtype={loaded.dtype} size={width}x{height} steps={args.steps}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
