"""Regenerate indexed prompts with their own settings: the library the CLI and the worker call.

    regenerate(db, [12, 13], Overrides(seed=7), RunnerOptions(model="sd-v1-5.safetensors"))

Each generation becomes a Plan (every setting decided: the row's, a remix override, or a stated
default), then the plans run in numbered steps, diffusers-style:

    1. choose the model (the row's checkpoint by A1111 hash, the corpus's model, or --model)
    2. load its pipeline (once per process)
    3. group plans whose settings can share a pipeline call
    4. load LoRAs and embeddings, set the scheduler
    5. encode the prompts (compel: A1111 weights, long prompts, clip skip)
    6. draw the noise (one seeded generator per image)
    7. denoise and decode
    8. write the PNGs (A1111 infotext) and the regenerations rows, with a score against the source

Whatever cannot be done as recorded (a LoRA not found, an unknown sampler, a hires-fix pass) is in
the plan's `not_honoured`, printed and recorded with the image.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path

from spellbook.database.connect import transaction
from spellbook.runner.pipelines import DEFAULT_SIZE, LoadedModel, RunnerError, load_model
from spellbook.runner.prompts import ParsedPrompt, parse_prompt
from spellbook.runner.samplers import SamplerPlan, build_scheduler, plan_sampler, scheduler_config

# Corpora whose images were made with Stable Diffusion v1.x and that record no checkpoint.
SD1_DEFAULT = "CompVis/stable-diffusion-v1-4"
SD1_CORPORA = {
    "diffusiondb": "DiffusionDB's images were made in August 2022 on Stable Diffusion's Discord server, with Stable Diffusion v1.x "
                   "(the checkpoints that became v1.4)",
    "krea": "Krea's open-prompts come from the Stable Diffusion Discord beta of 2022, Stable Diffusion v1.x",
    "lexica": "Lexica's images of 2022 were made with Stable Diffusion v1.x",
    "i2p": "the I2P benchmark's prompts were written against Stable Diffusion v1.4",
}
DEFAULT_STEPS = 20  # A1111's default
DEFAULT_CFG = 7.0  # A1111's default
SIZE_MULTIPLE = 8  # the VAE's scale factor: latents are 1/8 of the image


class RegenerationError(RunnerError):
    """One generation that cannot be regenerated (and why); the others still run."""


@dataclass
class Overrides:
    """Fields the user changes ("remix"); None keeps the recorded value."""

    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None
    width: int | None = None
    height: int | None = None
    negative: str | None = None
    init_image: str | None = None  # a file, or a generation id whose image is on this machine
    strength: float | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> "Overrides":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in (data or {}).items() if key in known})

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class RunnerOptions:
    model: str | None = None  # hub id, diffusers folder or checkpoint file, for every row
    models_dir: str | None = None  # where checkpoints are looked up by the row's hash
    lora_dir: str | None = None
    embeddings_dir: str | None = None
    config: str | None = None  # a diffusers folder (or hub id) with the configuration single files need
    device: str | None = None
    dtype: str | None = None
    out: str | None = None  # default: regenerations/ beside the database
    download: bool = False  # let diffusers fetch from the hub (otherwise the local cache only)
    compile: bool = False
    batch_size: int = 1
    score: bool = True

    @classmethod
    def from_environment(cls, environ=os.environ) -> "RunnerOptions":
        """What `spellbook serve --enable-runner`'s worker is told through its environment."""
        value = lambda name: environ.get(name) or None  # noqa: E731
        return cls(
            model=value("SPELLBOOK_RUNNER_MODEL"), models_dir=value("SPELLBOOK_MODELS_DIR"), lora_dir=value("SPELLBOOK_LORA_DIR"),
            embeddings_dir=value("SPELLBOOK_EMBEDDINGS_DIR"), config=value("SPELLBOOK_RUNNER_CONFIG"), device=value("SPELLBOOK_RUNNER_DEVICE"),
            dtype=value("SPELLBOOK_RUNNER_DTYPE"), out=value("SPELLBOOK_RUNNER_OUT"), download=environ.get("SPELLBOOK_RUNNER_DOWNLOAD") == "1",
            compile=environ.get("SPELLBOOK_RUNNER_COMPILE") == "1",
        )


@dataclass
class Plan:
    """One image to make, every setting decided."""

    generation_id: int | None
    source: str | None
    prompt: str  # as recorded (tags and all): what the PNG says
    negative_prompt: str | None
    positive: ParsedPrompt
    negative: ParsedPrompt
    seed: int
    steps: int
    cfg: float
    sampler: SamplerPlan
    width: int | None  # None: the model family's default, once the model is known
    height: int | None
    clip_skip: int | None
    model: str
    model_reason: str
    model_hash_recorded: str | None = None
    init_image: str | None = None
    strength: float | None = None
    eta: float | None = None
    guidance_rescale: float | None = None
    noise_on_device: bool = False
    loras: list = field(default_factory=list)  # [(name, weight)]
    overrides: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    not_honoured: list = field(default_factory=list)


@dataclass
class Result:
    generation_id: int | None
    regeneration_id: int | None = None
    image_path: str | None = None
    record: dict | None = None
    error: str | None = None

    def report(self) -> str:
        if self.error:
            return f"generation {self.generation_id}: not regenerated: {self.error}"
        r = self.record
        sampler = r["sampler_a1111"] + (f" {r['schedule_label']}" if r.get("schedule_label") else "")
        lines = [
            f"generation {self.generation_id} -> {self.image_path}",
            f"    regenerated with the same settings: seed {r['seed']}, {r['steps']} steps, {sampler}, CFG {r['cfg']:g}, "
            f"{r['width']}x{r['height']}, {r['model']}" + (f" [{r['model_hash']}]" if r.get("model_hash") else "")
            + f" ({r['model_reason']}); {r['seconds']:.2f} s on {r['device']} ({r['dtype']})",
        ]
        if r.get("score_note"):
            lines.append(f"    {r['score_note']}")
        lines += [f"    note: {note}" for note in r["notes"]]
        lines += [f"    not honoured: {item}" for item in r["not_honoured"]]
        return "\n".join(lines)


# --- planning ----------------------------------------------------------------------------------------

# Settings that change nothing about the pixels (versions, hashes, the tool's own bookkeeping).
_INFORMATIONAL = {
    "version", "app", "software", "title", "lora hashes", "ti hashes", "hashes", "civitai resources", "civitai metadata", "model hash",
    "sampler_node", "metadata_scheme", "generation_mode", "emphasis", "schedule type", "scheduler", "schedule", "rng", "rand_device",
    "clip skip", "clip_skip", "stop_at_clip_layer", "eta", "eta ddim", "cfg rescale", "cfg rescale phi", "cfg_rescale_multiplier",
    "denoise", "loras", "vae", "vae_name", "spellbook source", "size-1", "size-2", "first pass size", "user", "comment",
}
_NO_VAE = {"", "none", "automatic", "default (model)", "default", "baked vae"}


def _extra_value(extra: dict, *names):
    lowered = {str(key).lower(): value for key, value in (extra or {}).items()}
    for name in names:
        if name in lowered and lowered[name] not in (None, ""):
            return lowered[name]
    return None


def _as_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _clip_skip(extra: dict) -> int | None:
    value = _extra_value(extra, "clip skip", "clip_skip", "stop_at_clip_layer")
    number = _as_float(value)
    if number is None:
        return None
    return abs(int(number))  # ComfyUI's CLIPSetLastLayer writes -2 for A1111's "Clip skip: 2"


def _short(value, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _extra_not_honoured(extra: dict, has_init: bool) -> list[str]:
    """Every recorded setting the runner does not apply, said in plain words."""
    out = []
    hires = {key: value for key, value in extra.items() if str(key).lower().startswith("hires")}
    if hires:
        what = ", ".join(f"{key}: {_short(value, 40)}" for key, value in hires.items())
        out.append(f"hires fix ({what}): the second, upscaling pass is not run; this is the first pass at the recorded size")
    for key, value in extra.items():
        lower = str(key).lower()
        if lower in _INFORMATIONAL or lower.startswith("hires") or value in (None, "", [], {}):
            continue
        if lower == "denoising strength":
            if not hires and not has_init:
                out.append(f"Denoising strength {value}: an img2img image whose source image is not known; run as text-to-image")
            continue
        if lower == "strength" and not has_init:
            if (_as_float(value) or 1.0) < 1.0:
                out.append(f"strength {value}: an img2img image whose source image is not known; run as text-to-image")
            continue
        if lower in ("later_passes", "upscale_model", "scale_by"):
            out.append(f"{key}: {_short(value)}: later sampling or upscaling passes are not run")
            continue
        if lower in ("refiner_model", "refiner", "refiner_switch", "refiner switch at") and str(value).lower() in ("none", "0.5", ""):
            continue
        if str(value).strip().lower() in ("0", "0.0", "false", "none", "off"):
            continue  # a setting that was off ("Variation seed strength: 0", NovelAI's "noise: 0.0")
        out.append(f"{key}: {_short(value)}: not applied (the runner has no equivalent)")
    vae = _extra_value(extra, "vae", "vae_name")
    if isinstance(vae, dict):
        vae = vae.get("model_name")
    if vae is not None and str(vae).strip().lower() not in _NO_VAE:
        out.append(f"VAE {vae}: a separate VAE is not loaded; the checkpoint's own VAE was used")
    denoise = _as_float(_extra_value(extra, "denoise"))
    if denoise is not None and denoise < 1.0 and not has_init:
        out.append(f"denoise {denoise:g}: an img2img image whose source image is not known; run as text-to-image")
    return out


def _recorded_loras(extra: dict) -> list[tuple[str, float]]:
    """LoRAs a tool recorded outside the prompt (ComfyUI's LoraLoader nodes, Fooocus' list)."""
    found = []
    for item in (extra or {}).get("loras") or []:
        if isinstance(item, dict):
            name, weight = item.get("lora_name") or item.get("name"), item.get("strength_model", item.get("weight", 1.0))
        elif isinstance(item, (list, tuple)) and item:
            name, weight = item[0], item[1] if len(item) > 1 else 1.0
        else:
            continue
        if isinstance(name, str) and name.strip() and name.lower() != "none":
            found.append((Path(name.replace("\\", "/")).stem, _as_float(weight) if _as_float(weight) is not None else 1.0))
    return found


def choose_model(row: dict, options: RunnerOptions, hash_cache=None) -> tuple[str, str]:
    """(model, why) for a generation: --model; else the checkpoint in --models-dir that the
    image's Model hash (or Model name) names; else the model its corpus was made with."""
    from spellbook.runner.checkpoints import find_checkpoint

    if options.model:
        return options.model, "given with --model"
    recorded_hash, recorded_name = row.get("model_hash"), row.get("model")
    if options.models_dir and (recorded_hash or recorded_name):
        found = find_checkpoint(options.models_dir, recorded_hash, Path(str(recorded_name)).stem if recorded_name else None, cache=hash_cache)
        if found is not None:
            why = {
                "sha256": f"its Model hash {recorded_hash} is the sha256 prefix of {found.path.name} (A1111 1.x's hash)",
                "old hash": f"its Model hash {recorded_hash} is {found.path.name}'s old A1111 hash (sha256 of 64 KiB at 1 MiB)",
                "file name": f"no hash recorded; {found.path.name} has its model's name",
            }[found.matched_by]
            return str(found.path), why
    source = row.get("source")
    if source in SD1_CORPORA and not recorded_hash:
        return SD1_DEFAULT, f"{SD1_CORPORA[source]}; {SD1_DEFAULT} is the public v1.x checkpoint closest to them"
    what = ", ".join(part for part in (f"model {recorded_name}" if recorded_name else "", f"hash {recorded_hash}" if recorded_hash else "") if part)
    where = f"no checkpoint in {options.models_dir} matches" if options.models_dir else "no --models-dir to look it up in"
    raise RegenerationError(f"it was made with {what or 'an unrecorded model'}; {where}: pass --models-dir or --model")


def _round_size(value: int, name: str, notes: list) -> int:
    rounded = max(SIZE_MULTIPLE, int(value / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)  # half up: 500 -> 504
    if rounded != value:
        notes.append(f"{name} {value} rounded to {rounded} (diffusers needs multiples of {SIZE_MULTIPLE})")
    return rounded


def _noise_on_device(row: dict, extra: dict) -> bool:
    """A1111 draws its noise on the GPU unless set to "RNG: CPU"; every other tool here on the CPU."""
    rng = str(_extra_value(extra, "rng") or "").lower()
    return row.get("generator") in ("AUTOMATIC1111", "Forge", "reForge", "SD.Next") and rng not in ("cpu",)


def plan_generation(row: dict, overrides: Overrides | None = None, options: RunnerOptions | None = None, hash_cache=None) -> Plan:
    """Every setting for regenerating one generations row: the row's, overridden, or a stated default."""
    overrides = overrides or Overrides()
    options = options or RunnerOptions()
    extra = row.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra else {}
    notes: list[str] = []
    not_honoured: list[str] = []

    if overrides.seed is not None:
        seed = int(overrides.seed)
    elif row.get("seed") is not None and int(row["seed"]) >= 0:
        seed = int(row["seed"])
    else:
        seed = secrets.randbelow(2**32)
        notes.append(f"no seed recorded: drew seed {seed}")
    if not 0 <= seed < 2**63:
        raise RegenerationError(f"seed {seed} is outside 0..2^63-1 (what SQLite, and so the index, can hold)")
    if seed >= 2**32:
        notes.append(f"seed {seed} is over 32 bits: torch's CPU generator, like ComfyUI's, uses its low 32 bits ({seed % 2**32})")

    steps = overrides.steps if overrides.steps is not None else row.get("steps")
    if steps is None:
        steps = DEFAULT_STEPS
        notes.append(f"no steps recorded: {DEFAULT_STEPS} (A1111's default)")
    steps = int(steps)
    if steps < 1:
        notes.append(f"steps {steps} raised to 1")
        steps = 1

    cfg = overrides.cfg if overrides.cfg is not None else row.get("cfg")
    if cfg is None:
        cfg = DEFAULT_CFG
        notes.append(f"no CFG scale recorded: {DEFAULT_CFG:g} (A1111's default)")
    cfg = float(cfg)  # never clamped: 0, 30 and 500 are real values
    if cfg < 1:
        not_honoured.append(f"CFG scale {cfg:g}: diffusers does no guidance below 1 and uses the prompt alone (A1111 would extrapolate towards the negative)")

    if overrides.sampler is not None:
        sampler = plan_sampler(overrides.sampler)
    else:
        schedule = _extra_value(extra, "schedule type", "scheduler", "schedule")
        sampler = plan_sampler(row.get("sampler"), schedule if isinstance(schedule, str) else None, original=row.get("sampler_original"))
    (notes if sampler.exact else not_honoured).extend(sampler.notes)

    width = overrides.width if overrides.width is not None else row.get("width")
    height = overrides.height if overrides.height is not None else row.get("height")
    if width and height:
        width, height = _round_size(int(width), "width", notes), _round_size(int(height), "height", notes)
    else:
        width = height = None

    negative_text = overrides.negative if overrides.negative is not None else row.get("negative_prompt")
    positive = parse_prompt(row.get("prompt") or "", steps)
    negative = parse_prompt(negative_text or "", steps)
    not_honoured += positive.not_honoured + [f"negative prompt: {item}" for item in negative.not_honoured]
    loras = [(tag.name, tag.weight) for tag in positive.networks + negative.networks if tag.kind in ("lora", "lyco")]
    for name, weight in _recorded_loras(extra):
        if name not in {n for n, _ in loras}:
            loras.append((name, weight))

    clip = _clip_skip(extra)
    model, reason = choose_model(row, options, hash_cache)
    init = overrides.init_image
    strength = overrides.strength if init else None
    if init and strength is None:
        strength = 0.75
        notes.append("no --strength given: 0.75 (A1111's default denoising strength)")
    not_honoured += _extra_not_honoured(extra, has_init=bool(init))
    eta = _as_float(_extra_value(extra, "eta ddim", "eta"))
    rescale = _as_float(_extra_value(extra, "cfg rescale", "cfg rescale phi", "cfg_rescale_multiplier"))
    return Plan(
        generation_id=row.get("id"), source=row.get("source"), prompt=row.get("prompt") or "", negative_prompt=negative_text,
        positive=positive, negative=negative, seed=seed, steps=steps, cfg=cfg, sampler=sampler, width=width, height=height,
        clip_skip=clip, model=model, model_reason=reason, model_hash_recorded=row.get("model_hash"), init_image=init, strength=strength,
        eta=eta if sampler.scheduler == "DDIMScheduler" else None, guidance_rescale=rescale if rescale else None,
        noise_on_device=_noise_on_device(row, extra), loras=loras, overrides=overrides.as_dict(), notes=notes, not_honoured=not_honoured,
    )


# --- running -----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import diffusers
    import torch

    try:
        compel_version = version("compel")
    except PackageNotFoundError:
        compel_version = None
    return {"diffusers_version": diffusers.__version__, "torch_version": torch.__version__, "compel_version": compel_version}


@lru_cache(maxsize=1)
def _spellbook_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spellbook")
    except PackageNotFoundError:
        return "dev"


def default_out(db_path) -> Path:
    return Path(db_path).resolve().parent / "regenerations"


class Runner:
    """Regenerations against one Spellbook database: its runner store, loaded models and output folder."""

    def __init__(self, db_path, options: RunnerOptions | None = None, store=None):
        from spellbook.database.connect import connect_readonly
        from spellbook.runner.store import RunnerStore

        self.db_path = Path(db_path)
        self.options = options or RunnerOptions()
        if not self.db_path.is_file():
            raise RunnerError(f"{self.db_path}: no such database")
        self.conn = connect_readonly(self.db_path)
        try:
            self.store = store or RunnerStore.beside(self.db_path)
        except Exception as error:  # a read-only folder: the sqlite3 module's OperationalError
            self.conn.close()
            raise RunnerError(f"cannot write the runner's database beside {self.db_path.name}: {error}") from None
        self.out = Path(self.options.out) if self.options.out else default_out(self.db_path)
        self._encoders: dict[int, object] = {}

    def close(self) -> None:
        self.conn.close()

    # --- reading the rows ----------------------------------------------------------------------

    def row(self, generation_id: int) -> dict:
        from spellbook.queries.reports import generation, removal_of

        removal = removal_of(self.conn, "generation", item_id=int(generation_id))
        if removal is not None:  # taken down: not regenerated either
            raise RegenerationError(f"generation {generation_id} was removed on {removal['removed_at']}: {removal['reason']}")
        row = generation(self.conn, int(generation_id))
        if row is None:
            raise RegenerationError(f"no generation {generation_id} in {self.db_path.name}")
        return row

    def search(self, query: str, limit: int = 20) -> list[int]:
        from spellbook.queries.search import search_prompts

        return [row["id"] for row in search_prompts(self.conn, query, limit=limit).rows]

    def plans(self, generation_ids, overrides: Overrides | None = None) -> tuple[list[Plan], list[Result]]:
        plans, failures = [], []
        for generation_id in generation_ids:
            try:
                plans.append(plan_generation(self.row(generation_id), overrides, self.options, hash_cache=self.store))
            except RegenerationError as error:
                failures.append(Result(generation_id, error=str(error)))
        return plans, failures

    # --- the numbered steps ----------------------------------------------------------------------

    def run(self, plans: list[Plan], progress=None, job_id: int | None = None) -> list[Result]:
        """Make every plan's image; progress(step, total) after each denoising step (return False to stop)."""
        results: list[Result] = []
        by_model: dict[str, list[Plan]] = {}
        for plan in plans:
            by_model.setdefault(plan.model, []).append(plan)
        for model_name, model_plans in by_model.items():
            try:
                loaded = self._load(model_name)  # 1-2
            except RunnerError as error:
                results += [Result(plan.generation_id, error=str(error)) for plan in model_plans]
                continue
            for plan in model_plans:
                self._settle_size(plan, loaded)
            for batch in self._batches(loaded, model_plans):  # 3
                try:
                    results += self._run_batch(loaded, batch, progress, job_id)
                except RegenerationError as error:
                    results += [Result(plan.generation_id, error=str(error)) for plan in batch]
        return results

    def _load(self, model: str) -> LoadedModel:
        options = self.options
        return load_model(model, options.device, options.dtype, options.config, options.download, options.compile, hash_cache=self.store)

    @staticmethod
    def _settle_size(plan: Plan, loaded: LoadedModel) -> None:
        if plan.width is None:
            plan.width = plan.height = DEFAULT_SIZE[loaded.family]
            plan.notes.append(f"no size recorded: {plan.width}x{plan.height} ({loaded.family}'s native size)")
        if plan.clip_skip and plan.clip_skip > 1 and loaded.family != "sd1":
            if loaded.family == "sd2" or plan.clip_skip > 2:
                plan.not_honoured.append(f"Clip skip {plan.clip_skip}: only applied to SD 1.x text encoders "
                                         f"({'SDXL always uses the penultimate layer' if loaded.family == 'sdxl' else 'SD 2.x already uses the penultimate layer'})")
            plan.clip_skip = None

    def _encoder(self, loaded: LoadedModel):
        from spellbook.runner.prompts import PromptEncoder

        if id(loaded) not in self._encoders:
            self._encoders[id(loaded)] = PromptEncoder(loaded)
        return self._encoders[id(loaded)]

    def _batches(self, loaded: LoadedModel, plans: list[Plan]):
        """Plans that can share one pipeline call: the same size, steps, CFG, scheduler, LoRAs,
        clip skip and img2img settings (and, for DPM++ SDE, the same seed)."""
        size = max(1, int(self.options.batch_size))
        groups: dict[tuple, list[Plan]] = {}
        for plan in plans:
            key = (plan.width, plan.height, plan.steps, plan.cfg, plan.sampler.scheduler, json.dumps(plan.sampler.config, sort_keys=True),
                   tuple(sorted(plan.loras)), plan.clip_skip, plan.init_image, plan.strength, plan.eta, plan.guidance_rescale,
                   plan.noise_on_device, None if plan.sampler.batchable else plan.seed)
            groups.setdefault(key, []).append(plan)
        for group in groups.values():
            for start in range(0, len(group), size):
                yield group[start : start + size]

    def _activate_loras(self, loaded: LoadedModel, plan: Plan) -> list[dict]:
        """Step 4: the plan's LoRAs loaded (once) and set at their weights; the others switched off."""
        from spellbook.runner.checkpoints import addnet_hash, find_named_file

        pipe, active = loaded.pipe, []
        for name, weight in plan.loras:
            path = find_named_file(self.options.lora_dir, name)
            if path is None:
                where = "not in --lora-dir" if self.options.lora_dir else "no --lora-dir given"
                plan.not_honoured.append(f"LoRA {name}: not found ({where}); run without it")
                continue
            adapter = "lora_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
            if adapter not in loaded.loras:
                try:
                    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
                except Exception as error:  # a LoRA of another model family, a format diffusers cannot read
                    plan.not_honoured.append(f"LoRA {name}: {path.name} could not be loaded ({_short(str(error), 160)}); run without it")
                    continue
                loaded.loras[adapter] = {"name": name, "file": path.name, "hash": addnet_hash(path)[:12]}
            active.append((adapter, weight, {**loaded.loras[adapter], "weight": weight}))
        if loaded.loras:
            if active:
                pipe.enable_lora()
                pipe.set_adapters([adapter for adapter, _, _ in active], adapter_weights=[weight for _, weight, _ in active])
            else:
                pipe.disable_lora()
        return [record for _, _, record in active]

    def _load_embeddings(self, loaded: LoadedModel, plan: Plan) -> list[dict]:
        """Step 4: every embedding named in the prompts, loaded (once) under a token of its own,
        `<emb:name>`, that the prompt's word is rewritten to: the word itself stays a plain word in
        runs that do not ask for the embedding, even in a process that has loaded it before."""
        from spellbook.runner.checkpoints import addnet_hash
        from spellbook.runner.prompts import embedding_files, embedding_token, embeddings_named, spell_embeddings

        available = embedding_files(self.options.embeddings_dir)
        named = embeddings_named([plan.positive.text, plan.negative.text], available)
        records = []
        for name, path in named.items():
            token = embedding_token(name)
            if token not in loaded.embeddings:
                try:
                    self._load_embedding(loaded, path, token)
                except Exception as error:
                    plan.not_honoured.append(f"embedding {name}: {path.name} could not be loaded ({_short(str(error), 160)})")
                    continue
                loaded.embeddings[token] = {"name": name, "file": path.name, "hash": addnet_hash(path)[:12]}
            records.append(loaded.embeddings[token])
        tokens = {name: embedding_token(name) for name in named if embedding_token(name) in loaded.embeddings}
        if tokens:
            for parsed in (plan.positive, plan.negative):
                parsed.fragments = [(spell_embeddings(text, tokens), weight) for text, weight in parsed.fragments]
                parsed.text = spell_embeddings(parsed.text, tokens)
        return records

    @staticmethod
    def _load_embedding(loaded: LoadedModel, path: Path, token: str) -> None:
        pipe = loaded.pipe
        if loaded.family == "sdxl":
            from safetensors.torch import load_file

            state = load_file(str(path)) if path.suffix == ".safetensors" else None
            if state and {"clip_l", "clip_g"} <= set(state):
                pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
                pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
                return
        pipe.load_textual_inversion(str(path), token=token)

    def _run_batch(self, loaded: LoadedModel, batch: list[Plan], progress, job_id) -> list[Result]:
        import torch

        first = batch[0]
        loras = self._activate_loras(loaded, first)  # 4
        for plan in batch[1:]:
            plan.not_honoured.extend(item for item in first.not_honoured if item.startswith("LoRA ") and item not in plan.not_honoured)
        embeddings = {id(plan): self._load_embeddings(loaded, plan) for plan in batch}
        pipe = loaded.img2img() if first.init_image else loaded.pipe
        pipe.scheduler = build_scheduler(first.sampler, loaded.scheduler_config, seed=first.seed)

        encoder = self._encoder(loaded)  # 5
        conditionings = [encoder.encode(plan.positive, plan.negative, plan.clip_skip) for plan in batch]
        lengths = {c.length for c in conditionings}
        if len(lengths) > 1:  # prompts of different chunk counts: one call each, so padding never changes an image
            results = []
            for plan in batch:
                results += self._run_batch(loaded, [plan], progress, job_id)
            return results

        noise_device = loaded.device if (first.noise_on_device and loaded.device == "cuda") else "cpu"  # 6
        generators = [torch.Generator(noise_device).manual_seed(plan.seed) for plan in batch]
        kwargs = {
            "prompt_embeds": torch.cat([c.embeds for c in conditionings]),
            "negative_prompt_embeds": torch.cat([c.negative_embeds for c in conditionings]),
            "num_inference_steps": first.steps, "guidance_scale": first.cfg, "generator": generators, "output_type": "pil",
        }
        if loaded.family == "sdxl":
            kwargs["pooled_prompt_embeds"] = torch.cat([c.pooled for c in conditionings])
            kwargs["negative_pooled_prompt_embeds"] = torch.cat([c.negative_pooled for c in conditionings])
        if first.init_image:
            kwargs["image"] = [self._init_image(plan) for plan in batch]
            kwargs["strength"] = first.strength
        else:
            kwargs["height"], kwargs["width"] = first.height, first.width
        if first.eta is not None:
            kwargs["eta"] = first.eta
        if first.guidance_rescale:
            kwargs["guidance_rescale"] = first.guidance_rescale
        total = max(1, int(first.steps * first.strength)) if first.init_image else first.steps
        if progress is not None:
            def on_step(pipeline, step, timestep, tensors):
                if progress(step + 1, total) is False:
                    pipeline._interrupt = True
                return tensors

            kwargs["callback_on_step_end"] = on_step

        if loaded.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():  # 7
            images = pipe(**kwargs).images
        if loaded.device == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / len(batch)
        if getattr(pipe, "_interrupt", False):
            pipe._interrupt = False
            raise RegenerationError("stopped: the job was taken away from this worker")

        from spellbook.runner.pipelines import attention_kind

        common = {**_versions(), "device": loaded.device, "dtype": loaded.dtype, "attention": attention_kind(loaded.pipe)}
        return [self._save(loaded, plan, image, seconds, len(batch), pipe.scheduler, loras, embeddings[id(plan)], common, job_id, noise_device)
                for plan, image in zip(batch, images)]  # 8

    def _init_image(self, plan: Plan):
        from PIL import Image

        from spellbook.runner.score import source_image

        reference = str(plan.init_image)
        if reference.isdigit() and not Path(reference).exists():
            image = source_image(self.conn, int(reference))
            if image is None:
                raise RegenerationError(f"--init-image {reference}: generation {reference} has no image on this machine")
        else:
            try:
                with Image.open(reference) as opened:
                    image = opened.convert("RGB")
            except OSError as error:
                raise RegenerationError(f"--init-image {reference}: {error}") from None
        return image.resize((plan.width, plan.height), Image.LANCZOS) if image.size != (plan.width, plan.height) else image

    def _infotext(self, loaded: LoadedModel, plan: Plan, loras: list, embeddings: list, noise_device: str) -> str:
        from spellbook.runner.metadata import infotext, number

        settings = {
            "Steps": plan.steps,
            "Sampler": plan.sampler.a1111_name,
            "Schedule type": plan.sampler.schedule_label,
            "CFG scale": number(plan.cfg),
            "Seed": plan.seed,
            "Size": f"{plan.width}x{plan.height}",
            "Model hash": loaded.short_hash,
            "Model": Path(loaded.name).stem if loaded.source == "single-file" else loaded.name,
            "Denoising strength": number(plan.strength) if plan.init_image else None,
            "Clip skip": plan.clip_skip if plan.clip_skip and plan.clip_skip > 1 else None,
            "RNG": "GPU" if noise_device != "cpu" else "CPU",
            "Eta DDIM": number(plan.eta) if plan.eta is not None else None,
            "Lora hashes": ", ".join(f"{l['name']}: {l['hash']}" for l in loras) or None,
            "TI hashes": ", ".join(f"{e['name']}: {e['hash']}" for e in embeddings) or None,
            "Spellbook source": f"generation {plan.generation_id}" if plan.generation_id is not None else None,
            "Version": f"spellbook {_spellbook_version()}",
        }
        return infotext(plan.prompt, plan.negative_prompt, settings)

    def _save(self, loaded, plan: Plan, image, seconds, batch_size, scheduler, loras, embeddings, common, job_id, noise_device) -> Result:
        from spellbook.runner.metadata import save_png
        from spellbook.runner.score import score

        scores = score(self.db_path, self.conn, plan.generation_id, image, loaded.device) if self.options.score else {
            "source_image": 0, "score_note": None}
        record = {
            "generation_id": plan.generation_id, "job_id": job_id, "prompt": plan.prompt, "negative_prompt": plan.negative_prompt,
            "seed": plan.seed, "steps": plan.steps, "cfg": plan.cfg, "sampler": plan.sampler.canonical, "schedule": plan.sampler.schedule,
            "sampler_requested": plan.sampler.requested, "scheduler_class": type(scheduler).__name__,
            "scheduler_config": scheduler_config(scheduler), "width": plan.width, "height": plan.height, "clip_skip": plan.clip_skip,
            "batch_size": batch_size, "init_image": plan.init_image, "strength": plan.strength, "model": loaded.name,
            "model_source": loaded.source, "model_family": loaded.family, "model_hash": loaded.short_hash, "model_sha256": loaded.sha256,
            "model_revision": loaded.revision, "model_reason": plan.model_reason, "loras": loras, "embeddings": embeddings,
            "overrides": plan.overrides, "not_honoured": plan.not_honoured, "notes": plan.notes, "seconds": seconds,
            "image_path": "", **common, **scores,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        text = self._infotext(loaded, plan, loras, embeddings, noise_device)
        conn = self.store.conn
        with transaction(conn):
            regeneration_id = self.store.add_regeneration(record)
            path = self.out / f"regeneration-{regeneration_id:06d}.png"
            save_png(image, path, text)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            conn.execute("UPDATE regenerations SET image_path = ?, image_sha256 = ? WHERE id = ?", (str(path), digest, regeneration_id))
        record.update({"id": regeneration_id, "image_path": str(path), "image_sha256": digest, "sampler_a1111": plan.sampler.a1111_name,
                       "schedule_label": plan.sampler.schedule_label})
        return Result(plan.generation_id, regeneration_id, str(path), record)


def regenerate(db_path, generation_ids=(), overrides: Overrides | None = None, options: RunnerOptions | None = None, query: str | None = None,
               limit: int = 20, progress=None, job_id: int | None = None) -> list[Result]:
    """Regenerate generations (by id, and/or the matches of a full-text query) into PNGs and
    regenerations rows; one Result per generation, failures included."""
    runner = Runner(db_path, options)
    try:
        ids = list(generation_ids)
        if query:
            ids += [i for i in runner.search(query, limit) if i not in ids]
        plans, failures = runner.plans(ids, overrides)
        return failures + runner.run(plans, progress=progress, job_id=job_id)
    finally:
        runner.close()
