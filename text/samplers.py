"""One canonical name per sampler, whatever spelling a corpus used.

Canonical names are k-diffusion's (DiffusionDB writes them: "k_lms", "k_euler_ancestral"); the pages
show A1111's spelling ("LMS", "Euler a") because that is what prompt writers paste into their UI.
"""
from __future__ import annotations

# canonical name -> A1111 spelling
A1111_NAMES = {
    "ddim": "DDIM",
    "plms": "PLMS",
    "k_euler": "Euler",
    "k_euler_ancestral": "Euler a",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_ancestral": "DPM2 a",
    "k_lms": "LMS",
    "k_lms_karras": "LMS Karras",
    "k_dpm_2_karras": "DPM2 Karras",
    "k_dpm_2_ancestral_karras": "DPM2 a Karras",
    "k_dpm_fast": "DPM fast",
    "k_dpm_adaptive": "DPM adaptive",
    "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_2s_ancestral_karras": "DPM++ 2S a Karras",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_2m_karras": "DPM++ 2M Karras",
    "k_dpmpp_sde": "DPM++ SDE",
    "k_dpmpp_sde_karras": "DPM++ SDE Karras",
    "k_dpmpp_2m_sde": "DPM++ 2M SDE",
    "k_dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "k_dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
    "k_dpmpp_3m_sde": "DPM++ 3M SDE",
    "k_dpmpp_3m_sde_karras": "DPM++ 3M SDE Karras",
    "ddpm": "DDPM",
    "deis": "DEIS",
    "sa_solver": "SA-Solver",
    "unipc": "UniPC",
    "lcm": "LCM",
}

# DiffusionDB's metadata.parquet stores the sampler as a code; 9 is "others" (no canonical name).
DIFFUSIONDB_CODES = {
    1: "ddim",
    2: "plms",
    3: "k_euler",
    4: "k_euler_ancestral",
    5: "k_heun",
    6: "k_dpm_2",
    7: "k_dpm_2_ancestral",
    8: "k_lms",
}

# Other spellings seen in the wild (A1111 text, ComfyUI node inputs, Fooocus, InvokeAI), lower-cased.
_ALIASES = {
    "dpmpp_3m_sde": "k_dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu": "k_dpmpp_3m_sde",
    "dpmpp_2m_sde_heun": "k_dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu": "k_dpmpp_2m_sde_heun",
    "sa-solver": "sa_solver",
    "euler_a": "k_euler_ancestral",
    "euler_ancestral": "k_euler_ancestral",
    "euler": "k_euler",
    "heun": "k_heun",
    "dpm_2": "k_dpm_2",
    "dpm2": "k_dpm_2",
    "dpm_2_ancestral": "k_dpm_2_ancestral",
    "dpm2_a": "k_dpm_2_ancestral",
    "lms": "k_lms",
    "dpmpp_2m": "k_dpmpp_2m",
    "dpmpp_2m_sde": "k_dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu": "k_dpmpp_2m_sde",
    "dpmpp_sde": "k_dpmpp_sde",
    "dpmpp_sde_gpu": "k_dpmpp_sde",
    "dpmpp_2s_ancestral": "k_dpmpp_2s_ancestral",
    "dpm_fast": "k_dpm_fast",
    "dpm_adaptive": "k_dpm_adaptive",
    "uni_pc": "unipc",
    "uni_pc_bh2": "unipc",
    "k_dpmpp_2": "k_dpmpp_2m",
    # InvokeAI scheduler names (diffusers' KDPM2, PNDM)
    "kdpm_2": "k_dpm_2",
    "kdpm_2_a": "k_dpm_2_ancestral",
    "pndm": "plms",
    # NovelAI, Easy Diffusion
    "ddim_v3": "ddim",
    "dpmpp_2s_a": "k_dpmpp_2s_ancestral",
    "unipc_snr": "unipc",
    "unipc_snr_2": "unipc",
    "unipc_tq": "unipc",
    "unipc_tu": "unipc",
    "unipc_tu_2": "unipc",
}
_BY_A1111 = {name.lower(): canonical for canonical, name in A1111_NAMES.items()}


def canonical_sampler(value) -> str | None:
    """Map any spelling (code, k-diffusion, A1111, ComfyUI) to the canonical name; None if unknown."""
    if value is None:
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        return DIFFUSIONDB_CODES.get(int(value))
    text = str(value).strip()
    lowered = text.lower()
    if lowered in A1111_NAMES:
        return lowered
    if lowered in _BY_A1111:
        return _BY_A1111[lowered]
    key = lowered.replace(" ", "_").replace("+", "p")
    if key in A1111_NAMES:
        return key
    return _ALIASES.get(key) or _ALIASES.get(lowered)


def a1111_name(canonical: str | None) -> str | None:
    """The A1111 spelling of a canonical name ("k_euler_ancestral" -> "Euler a")."""
    if canonical is None:
        return None
    return A1111_NAMES.get(canonical, canonical)
