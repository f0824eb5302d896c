"""Samplers as the corpora name them, onto diffusers schedulers.

Every spelling goes through `spellbook.text.samplers.canonical_sampler` first (DiffusionDB codes and
names, A1111's "Euler a", ComfyUI's "euler_ancestral"...); a few names that module does not know
(A1111 1.9's "DPM++ 3M SDE", ComfyUI's "ddpm", "deis", "sa_solver", the CFG++ variants...) are added
here. The schedule ("Karras", A1111 1.9's separate "Schedule type", ComfyUI's `scheduler`) becomes
the scheduler's sigma option. The table follows diffusers' own A1111/k-diffusion mapping
(docs: api/schedulers/overview) and is built with `Scheduler.from_config(pipe.scheduler.config)`,
so the model's betas, prediction type and step offset carry over. What has no diffusers equivalent
falls back to DEFAULT_SAMPLER and says so; docs/runner.md has the table.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from spellbook.text.samplers import A1111_NAMES, canonical_sampler

# A1111's default sampler since 1.6 ("DPM++ 2M" with the Karras schedule): what an unknown or
# unrecorded sampler becomes.
DEFAULT_SAMPLER = "k_dpmpp_2m"
DEFAULT_SCHEDULE = "karras"


@dataclass(frozen=True)
class Target:
    scheduler: str  # diffusers class name
    config: dict = field(default_factory=dict)
    note: str | None = None  # where the diffusers scheduler is only the closest one
    batchable: bool = True  # False where one noise seed serves the whole batch


# runner name -> diffusers scheduler; runner names are text.samplers' canonical ones (without the
# _karras suffix, which is a schedule) plus a few that module does not know.
TARGETS: dict[str, Target] = {
    "ddim": Target("DDIMScheduler"),
    "plms": Target("PNDMScheduler", {"skip_prk_steps": True}),
    "k_euler": Target("EulerDiscreteScheduler"),
    "k_euler_ancestral": Target("EulerAncestralDiscreteScheduler"),
    "k_heun": Target("HeunDiscreteScheduler"),
    "k_dpm_2": Target("KDPM2DiscreteScheduler"),
    "k_dpm_2_ancestral": Target("KDPM2AncestralDiscreteScheduler"),
    "k_lms": Target("LMSDiscreteScheduler"),
    "k_dpmpp_2m": Target("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "k_dpmpp_2m_sde": Target("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "k_dpmpp_2m_sde_heun": Target("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}),
    "k_dpmpp_3m_sde": Target("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    # k-diffusion's sample_dpmpp_sde, Brownian-tree noise (torchsde) seeded once for the whole batch
    "k_dpmpp_sde": Target("DPMSolverSDEScheduler", batchable=False),
    "k_dpmpp_2s_ancestral": Target("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                                   note="diffusers has no DPM++ 2S a; its single-step DPM++ (order 2) is the closest"),
    "unipc": Target("UniPCMultistepScheduler"),
    "lcm": Target("LCMScheduler"),
    "ddpm": Target("DDPMScheduler"),
    "deis": Target("DEISMultistepScheduler"),
    "sa_solver": Target("SASolverScheduler"),
}

# Names text.samplers does not know (lower-cased, spaces as "_", "+" as "p"), and what they become.
_EXTRA_NAMES = {
    "dpmpp_3m_sde": "k_dpmpp_3m_sde", "dpmpp_3m_sde_gpu": "k_dpmpp_3m_sde", "k_dpmpp_3m_sde": "k_dpmpp_3m_sde",
    "dpmpp_2m_sde_heun": "k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu": "k_dpmpp_2m_sde_heun", "k_dpmpp_2m_sde_heun": "k_dpmpp_2m_sde_heun",
    "ddpm": "ddpm", "deis": "deis", "sa_solver": "sa_solver", "sa_solver_pece": "sa_solver",
}
# Variants diffusers does not have, run with their base sampler (and said so).
_APPROXIMATE = {
    "euler_cfg_pp": ("k_euler", "CFG++ (a different guidance rule) is not in diffusers"),
    "euler_ancestral_cfg_pp": ("k_euler_ancestral", "CFG++ (a different guidance rule) is not in diffusers"),
    "dpmpp_2m_cfg_pp": ("k_dpmpp_2m", "CFG++ (a different guidance rule) is not in diffusers"),
    "dpmpp_2s_ancestral_cfg_pp": ("k_dpmpp_2s_ancestral", "CFG++ (a different guidance rule) is not in diffusers"),
    "ddim_cfgpp": ("ddim", "CFG++ (a different guidance rule) is not in diffusers"),
    "ddim_cfg_pp": ("ddim", "CFG++ (a different guidance rule) is not in diffusers"),
    "heunpp2": ("k_heun", "Heun++ is not in diffusers"),
}

# Schedules: A1111 1.9+ "Schedule type" labels and ComfyUI `scheduler` values (lower-cased, "_" for spaces).
_SIGMAS = {"karras": "use_karras_sigmas", "exponential": "use_exponential_sigmas", "beta": "use_beta_sigmas"}
_DEFAULT_SCHEDULES = {"", "normal", "uniform", "simple", "default", "discrete"}
_SPACING = {"sgm_uniform": "trailing", "trailing": "trailing", "leading": "leading", "ddim_uniform": "leading", "ddim": "leading"}
SCHEDULE_LABELS = {"karras": "Karras", "exponential": "Exponential", "beta": "Beta", "sgm_uniform": "SGM Uniform", "ddim_uniform": "DDIM"}

# A1111 1.9+ "Schedule type: Automatic": each sampler's own default schedule (sd_samplers_kdiffusion.py).
_A1111_AUTOMATIC = {"k_dpmpp_2m": "karras", "k_dpmpp_sde": "karras", "k_dpmpp_2s_ancestral": "karras", "k_dpmpp_2m_sde": "exponential",
                    "k_dpmpp_2m_sde_heun": "exponential", "k_dpmpp_3m_sde": "exponential"}

_SUFFIX = re.compile(r"[\s_](karras|exponential|beta|sgm[\s_]uniform|gpu)$", re.IGNORECASE)


@dataclass
class SamplerPlan:
    """What a row's sampler becomes: the runner name, the schedule, the diffusers scheduler."""

    name: str  # runner name: "k_euler_ancestral", "k_dpmpp_2m", ...
    schedule: str | None  # "karras", "exponential", "beta", "sgm_uniform" or None (the scheduler's default)
    scheduler: str  # diffusers class name
    config: dict  # the options from_config gets on top of the model's scheduler config
    requested: str | None  # as the row (or the user) wrote it
    exact: bool = True  # False: the closest diffusers scheduler, or the fallback
    notes: list[str] = field(default_factory=list)
    batchable: bool = True

    @property
    def a1111_name(self) -> str:
        """A1111's spelling of the sampler actually used ("DPM++ 2M"); the schedule is its own field."""
        return A1111_NAMES.get(self.name) or {
            "k_dpmpp_3m_sde": "DPM++ 3M SDE", "k_dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun", "ddpm": "DDPM", "deis": "DEIS", "sa_solver": "SA-Solver",
        }.get(self.name, self.name)

    @property
    def schedule_label(self) -> str | None:
        return SCHEDULE_LABELS.get(self.schedule) if self.schedule else None

    @property
    def canonical(self) -> str:
        """The canonical name with the schedule folded in as text.samplers has it ("k_dpmpp_2m_karras")."""
        folded = f"{self.name}_karras" if self.schedule == "karras" else self.name
        return folded if folded in A1111_NAMES else self.name


@lru_cache(maxsize=None)
def _parameters(scheduler: str) -> frozenset:
    import inspect

    import diffusers

    return frozenset(inspect.signature(getattr(diffusers, scheduler).__init__).parameters)


def _key(text: str) -> str:
    return text.strip().lower().replace(" ", "_").replace("+", "p").replace("-", "_")


def _runner_name(value) -> tuple[str | None, str | None, str | None]:
    """(runner name, schedule named inside it, note) for any spelling; (None, None, None) if unknown."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None, None
    text = str(value).strip()
    schedule = None
    for _ in range(3):
        canonical = canonical_sampler(text)
        if canonical is not None:
            if canonical.endswith("_karras") and canonical[: -len("_karras")] in TARGETS:
                return canonical[: -len("_karras")], "karras", None
            if canonical in TARGETS:
                return canonical, schedule, None
            return None, None, None  # a known sampler without a diffusers scheduler (DPM fast, DPM adaptive)
        key = _key(text).removeprefix("sample_")
        if key in _EXTRA_NAMES:
            return _EXTRA_NAMES[key], schedule, None
        if key in _APPROXIMATE:
            name, note = _APPROXIMATE[key]
            return name, schedule, note
        match = _SUFFIX.search(text)
        if match is None:
            break
        word = _key(match.group(1))
        schedule = schedule or (word if word != "gpu" else None)
        text = text[: match.start()]
    return None, None, None


# What the remix form offers (A1111's spellings); any other spelling plan_sampler knows works too.
REMIX_SAMPLERS = [
    "Euler a", "Euler", "LMS", "LMS Karras", "Heun", "DPM2", "DPM2 Karras", "DPM2 a", "DPM2 a Karras", "DPM++ 2S a", "DPM++ 2M",
    "DPM++ 2M Karras", "DPM++ SDE", "DPM++ SDE Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ 3M SDE", "DDIM", "PLMS",
    "UniPC", "LCM", "DDPM", "DEIS",
]


def known_sampler(name) -> bool:
    """Whether a sampler name has a diffusers scheduler here (no fallback), without importing diffusers."""
    return _runner_name(name)[0] is not None


def plan_sampler(sampler=None, schedule=None, *, original=None) -> SamplerPlan:
    """The scheduler for a sampler name (canonical, A1111, ComfyUI, DiffusionDB code or name) and an
    optional separate schedule ("Karras", "sgm_uniform"...). Unknown or unrecorded samplers become
    DEFAULT_SAMPLER with DEFAULT_SCHEDULE, and the plan says so."""
    requested = original if original is not None else sampler
    notes: list[str] = []
    name, inner_schedule, note = _runner_name(sampler)
    if name is None and original is not None:
        name, inner_schedule, note = _runner_name(original)
    exact = note is None
    if note:
        notes.append(f"sampler {requested}: {note}; ran {A1111_NAMES.get(name, name)}")
    if name is None:
        what = f"sampler {requested!s}" if requested not in (None, "") else "no sampler recorded"
        reason = "has no diffusers equivalent" if requested not in (None, "") else ""
        notes.append(f"{what}{' ' + reason if reason else ''}: used the default, DPM++ 2M Karras (A1111's default since 1.6)")
        name, inner_schedule, exact = DEFAULT_SAMPLER, DEFAULT_SCHEDULE, False

    target = TARGETS[name]
    config = dict(target.config)
    if target.note:
        notes.append(f"sampler {requested}: {target.note}")
        exact = False
    wanted = _key(str(schedule)) if schedule not in (None, "") else None
    if wanted == "automatic":
        chosen = inner_schedule or _A1111_AUTOMATIC.get(name)
    elif wanted in _DEFAULT_SCHEDULES or wanted is None:
        chosen = inner_schedule
    else:
        chosen = wanted
    honoured = None
    if chosen in _SIGMAS:
        if _SIGMAS[chosen] in _parameters(target.scheduler):
            config[_SIGMAS[chosen]] = True
            honoured = chosen
        else:
            notes.append(f"schedule {SCHEDULE_LABELS.get(chosen, chosen)}: diffusers' {target.scheduler} has no such option; used its default schedule")
            exact = False
    elif chosen in _SPACING:
        config["timestep_spacing"] = _SPACING[chosen]
        honoured = chosen
        if chosen == "ddim_uniform":
            notes.append("schedule ddim_uniform: approximated by diffusers' 'leading' timestep spacing")
            exact = False
    elif chosen is not None:
        notes.append(f"schedule {schedule}: not available in diffusers; used the scheduler's default schedule")
        exact = False
    if name == "k_dpmpp_sde":
        config["noise_sampler_seed"] = None  # set per image to its seed (regenerate.py)
    return SamplerPlan(name=name, schedule=honoured, scheduler=target.scheduler, config=config, requested=None if requested is None else str(requested),
                       exact=exact, notes=notes, batchable=target.batchable)


def build_scheduler(plan: SamplerPlan, base_config, seed: int | None = None):
    """The diffusers scheduler for a plan, from the model's own scheduler config."""
    import diffusers

    config = dict(plan.config)
    if "noise_sampler_seed" in config:
        config["noise_sampler_seed"] = seed
    cls = getattr(diffusers, plan.scheduler)
    base = {key: value for key, value in dict(base_config).items() if not key.startswith("_")}
    if plan.scheduler == "PNDMScheduler":
        base.pop("use_karras_sigmas", None)
    return cls.from_config({**base, **config})


def scheduler_config(scheduler) -> dict:
    """A scheduler's config as plain JSON-ready data (what the regenerations table records)."""
    out = {}
    for key, value in dict(scheduler.config).items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out
