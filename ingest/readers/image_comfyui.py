"""ComfyUI graphs: the API-format `prompt` (what the server ran: {node_id: {class_type, inputs}},
an input being a literal or a link [node_id, output_index]) and, when only that is missing, the
editor's `workflow` (nodes with positional `widgets_values`, links in a separate table), turned into
an API-like graph for the node types whose widget order is fixed.

The settings come from the first-pass sampler: the sampling node whose latent does not come from
another sampler (hires-fix and refiner passes do). Core samplers (KSampler, KSamplerAdvanced,
SamplerCustom, SamplerCustomAdvanced with its noise/guider/sampler/sigmas nodes) are read by their
inputs; custom samplers from node packs are recognised by a latent input plus sampling inputs.
Values are followed through primitive, seed and text nodes; prompts through conditioning nodes
(combine, area, ControlNet apply, guidance) to the text encoders. Every walk is bounded by a step
budget and a depth limit, and cycles are cut by visited sets, so a huge or cyclic graph costs at
most MAX_STEPS node visits.
"""
from __future__ import annotations

import re
from collections import deque

from spellbook.ingest.readers.common import RowRejected

MAX_NODES = 50_000
MAX_STEPS = 400_000
MAX_DEPTH = 24

_CORE_SAMPLERS = {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}
_SAMPLING_INPUTS = {"steps", "sampler_name", "sigmas", "seed", "noise_seed", "cfg", "sampler", "noise", "guider"}
_LATENT_INPUTS = ("latent_image", "latent", "samples", "latents")
# inputs that never carry conditioning: not followed when tracing a prompt
_NOT_CONDITIONING = {
    "clip", "model", "vae", "image", "images", "pixels", "mask", "control_net", "style_model",
    "clip_vision", "clip_vision_output", "upscale_model", "samples", "latent", "latent_image",
    "noise", "sampler", "sigmas", "guider", "ipadapter", "insightface", "unet", "seed", "noise_seed",
}
# inputs that never lead back to an earlier pass's latent or image
_NOT_LATENT = frozenset({
    "model", "clip", "vae", "positive", "negative", "conditioning", "cond1", "cond2", "guider", "sampler",
    "sigmas", "noise", "control_net", "clip_vision", "clip_vision_output", "style_model", "upscale_model",
    "ipadapter", "basic_pipe", "pipe", "sdxl_tuple",
})
# where prompt text sits in text-encoder and text nodes, most specific first
_TEXT_KEYS = (
    "text", "t5xxl", "text_g", "clip_g", "clip_l", "text_l", "populated_text", "prompt", "wildcard_text",
    "Text", "prompt_text", "string", "STRING", "text_0", "value",
)
_VALUE_KEYS = {
    "seed": ("seed", "noise_seed", "value", "int", "number", "Value", "seed_value"),
    "noise_seed": ("noise_seed", "seed", "value", "int", "number", "Value"),
    "steps": ("steps", "steps_total", "value", "int", "number", "Value"),
    "cfg": ("cfg", "value", "float", "number", "Value"),
    "sampler_name": ("sampler_name", "sampler", "value", "string", "Value"),
    "scheduler": ("scheduler", "value", "string", "Value"),
    "width": ("width", "value", "int", "number", "Width", "empty_latent_width"),
    "height": ("height", "value", "int", "number", "Height", "empty_latent_height"),
}
_GENERATES_TEXT = re.compile(r"llm|ollama|gpt|gemini|claude|TextGenerate|caption|florence|tagger|interrogat|qwen ?vl|joycaption", re.I)
_SHOWS_TEXT = re.compile(r"show ?text|display ?(any|text|string)|preview ?(any|text)", re.I)
_DIMENSIONS = re.compile(r"(\d+)\s*[x×*]\s*(\d+)")
_SAMPLER_CLASSES = {
    "SamplerEulerAncestral": "euler_ancestral",
    "SamplerEulerAncestralCFGPP": "euler_ancestral_cfg_pp",
    "SamplerLMS": "lms",
    "SamplerDPMPP_2M_SDE": "dpmpp_2m_sde",
    "SamplerDPMPP_3M_SDE": "dpmpp_3m_sde",
    "SamplerDPMPP_SDE": "dpmpp_sde",
    "SamplerDPMPP_2S_Ancestral": "dpmpp_2s_ancestral",
    "SamplerDPMAdaptative": "dpm_adaptive",
    "SamplerER_SDE": "er_sde",
    "SamplerSASolver": "sa_solver",
}
_SCHEDULER_CLASSES = {
    "KarrasScheduler": "karras",
    "ExponentialScheduler": "exponential",
    "PolyexponentialScheduler": "polyexponential",
    "SDTurboScheduler": "sd_turbo",
    "VPScheduler": "vp",
    "BetaSamplingScheduler": "beta",
    "LaplaceScheduler": "laplace",
    "AlignYourStepsScheduler": "align_your_steps",
    "GITSScheduler": "gits",
    "OptimalStepsScheduler": "optimal_steps",
}
_SIGMA_PASSTHROUGH = ("sigmas", "high_sigmas", "low_sigmas")
_MODEL_KEYS = ("ckpt_name", "unet_name", "base_ckpt_name", "model_path", "gguf_name")


def _branch_keys(branch: str | None) -> tuple:
    if branch is None:
        return ()
    return (branch, f"text_{branch}", f"{branch}_prompt", f"{branch}_text")


def is_link(value) -> bool:
    """API-format inputs link to another node's output as [node_id, output_index]."""
    return (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool)
    )


def node_order(node_id: str):
    """Numeric ids in number order ("9" before "10"), group/subgraph ids ("4:1") by their parts."""
    parts = node_id.split(":")
    if all(part.isdigit() for part in parts):
        return (0, tuple(int(part) for part in parts), "")
    return (1, (), node_id)


def looks_like_api_graph(data) -> bool:
    return isinstance(data, dict) and any(
        isinstance(node, dict) and "class_type" in node and isinstance(node.get("inputs", {}), dict)
        for node in list(data.values())[:2000]
    )


class Graph:
    def __init__(self, graph: dict, column: str, workflow=None):
        self.column = column
        self.widgets: dict[str, list] = {}
        if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
            for node in workflow["nodes"][:MAX_NODES]:
                if isinstance(node, dict) and isinstance(node.get("widgets_values"), list):
                    self.widgets[str(node.get("id"))] = node["widgets_values"]
        self.nodes: dict[str, dict] = {}
        for key, node in graph.items():
            if isinstance(node, dict) and "class_type" in node:
                inputs = node.get("inputs")
                self.nodes[str(key)] = {"class_type": str(node["class_type"]), "inputs": inputs if isinstance(inputs, dict) else {}}
        if len(self.nodes) > MAX_NODES:
            raise RowRejected(column, f"ComfyUI graph in {column} has {len(self.nodes):,} nodes; the limit is {MAX_NODES:,}")
        self.steps = 0
        self.guidance = None

    # -- plumbing --

    def spend(self, count: int = 1) -> None:
        self.steps += count
        if self.steps > MAX_STEPS:
            raise RowRejected(self.column, f"ComfyUI graph in {self.column} is too large or tangled to read in bounded time")

    def kind(self, node_id: str) -> str:
        return self.nodes[node_id]["class_type"]

    def inputs(self, node_id: str) -> dict:
        return self.nodes[node_id]["inputs"]

    def target(self, node_id: str, name: str, link) -> str:
        target = str(link[0])
        if target not in self.nodes:
            raise RowRejected(
                self.column,
                f"ComfyUI node {node_id} input {name!r} links to node {target}, which is not in the graph",
            )
        return target

    def linked(self, node_id: str, name: str) -> str | None:
        value = self.inputs(node_id).get(name)
        return self.target(node_id, name, value) if is_link(value) else None

    def upstream(self, node_id: str, names=None, skip=frozenset()):
        """Node ids reachable backwards from a node's inputs (all, or only `names` at the first
        step; never through the `skip` inputs), nearest first."""
        queue, seen = deque([node_id]), {node_id}
        first = True
        while queue:
            current = queue.popleft()
            self.spend()
            if not first:
                yield current
            for key, value in self.inputs(current).items():
                if (first and names is not None and key not in names) or key in skip:
                    continue
                if is_link(value):
                    target = self.target(current, key, value)
                    if target not in seen:
                        seen.add(target)
                        queue.append(target)
            first = False

    # -- values --

    def value(self, node_id: str, name: str, depth: int = 0):
        """An input's literal value, following links to primitive/seed/config nodes."""
        value = self.inputs(node_id).get(name)
        if not is_link(value):
            return value
        if depth >= MAX_DEPTH:
            return None
        self.spend()
        source = self.target(node_id, name, value)
        source_inputs = self.inputs(source)
        if name in ("width", "height"):
            for key in ("dimensions", "resolution", "aspect_ratio", "size"):
                text = source_inputs.get(key)
                match = _DIMENSIONS.search(text) if isinstance(text, str) else None
                if match and name not in source_inputs:
                    return int(match.group(1 if name == "width" else 2))
        for key in _VALUE_KEYS.get(name, (name, "value")):
            if key in source_inputs:
                found = self.value(source, key, depth + 1)
                if found is not None:
                    return found
        return None

    def text(self, node_id: str, depth: int = 0, branch: str | None = None, slot: int | None = None) -> str | None:
        """The text a text node (primitive, concatenation, switch, encoder) holds or produces."""
        if depth >= MAX_DEPTH:
            return None
        self.spend()
        kind = self.kind(node_id)
        inputs = self.inputs(node_id)
        if _GENERATES_TEXT.search(kind):
            # an LLM's or a tagger's output is never stored in the API graph (its inputs are an
            # instruction or an image, not the prompt); the editor's workflow may show it
            return self.shown_text(node_id)
        if _SHOWS_TEXT.search(kind):
            shown = self.shown_text(node_id)
            if shown:
                return shown
        if kind == "ComfySwitchNode":
            switch = self.value(node_id, "switch")
            order = ("on_true", "on_false") if switch is not False else ("on_false", "on_true")
            for key in order:
                found = self._text_input(node_id, key, depth)
                if found:
                    return found
            return None
        parts = [key for key in ("string_a", "string_b", "text_a", "text_b", "text_c", "text_d", "text1", "text2", "string1", "string2") if key in inputs]
        if len(parts) >= 2 and ("concat" in kind.lower() or "join" in kind.lower()):
            delimiter = inputs.get("delimiter", inputs.get("separator", ""))
            texts = [self._text_input(node_id, key, depth) for key in parts]
            return (delimiter if isinstance(delimiter, str) else "").join(t for t in texts if t)
        if branch is None and slot in (0, 1):
            branch = ("positive", "negative")[slot]  # a styler's outputs: positive text, negative text
        for key in _branch_keys(branch):
            if isinstance(inputs.get(key), str) or (is_link(inputs.get(key)) and key != branch):
                found = self._text_input(node_id, key, depth)
                if found is not None:
                    return found  # Efficient Loader, prompt stylers & co. hold both prompts as text
        keys = _TEXT_KEYS if kind != "ImpactWildcardEncode" else ("populated_text", "wildcard_text")
        empty = None
        for key in keys:
            if key in inputs:
                found = self._text_input(node_id, key, depth)
                if found:
                    return found
                if found == "" and empty is None:
                    empty = ""
        if kind in ("PreviewAny",):
            found = self._text_input(node_id, "source", depth)
            if found:
                return found
        shown = self.shown_text(node_id)
        return shown if shown else empty

    def shown_text(self, node_id: str) -> str | None:
        """Text computed at run time (an LLM, ShowText, a wildcard) is not in the API graph, but the
        editor's workflow keeps what the node displayed in its widgets_values, under the same id."""
        values = self.widgets.get(node_id)
        if not isinstance(values, list) or not re.search(r"show|display|preview|text|string|prompt|llm|generate", self.kind(node_id), re.I):
            return None
        for value in values[:8]:
            if isinstance(value, list) and value and isinstance(value[0], str):
                value = value[0]
            if isinstance(value, str) and value.strip() and value not in ("fixed", "randomize", "increment", "decrement"):
                return value
        return None

    def _text_input(self, node_id: str, key: str, depth: int) -> str | None:
        value = self.inputs(node_id).get(key)
        if isinstance(value, str):
            return value
        if is_link(value):
            return self.text(self.target(node_id, key, value), depth + 1, slot=value[1])
        return None

    def has_text(self, node_id: str, branch: str | None) -> bool:
        inputs = self.inputs(node_id)
        kind = self.kind(node_id)
        if any(isinstance(inputs.get(key), str) for key in _branch_keys(branch)):
            return True
        if "Encode" in kind or "Prompt" in kind or "Text" in kind or "String" in kind:
            return any(key in inputs for key in _TEXT_KEYS if key != "value")
        return any(key in inputs for key in ("text", "t5xxl", "text_g", "clip_l", "prompt", "populated_text"))

    def prompt(self, node_id: str, name: str, branch: str) -> str | None:
        """The prompt text behind a conditioning input: every text encoder feeding it (area prompts,
        combines...), depth-first in input order, one per line; "" when the encoders hold no text."""
        value = self.inputs(node_id).get(name)
        if isinstance(value, str):
            return value
        if not is_link(value):
            return None
        found: list[str] = []
        any_encoder = False
        seen: set[str] = set()
        stack = [self.target(node_id, name, value)]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            self.spend()
            kind = self.kind(current)
            inputs = self.inputs(current)
            if kind == "ConditioningZeroOut":
                any_encoder = True
                continue
            if kind == "FluxGuidance" and self.guidance is None:
                self.guidance = self.value(current, "guidance")
            if self.has_text(current, branch):
                text = self.text(current, branch=branch)
                if text is not None:
                    any_encoder = True
                    found.append(text)
                    if "guidance" in inputs and self.guidance is None:
                        self.guidance = self.value(current, "guidance")
                    continue
            if branch in inputs and "positive" in inputs and "negative" in inputs:
                keys = [branch]  # ControlNet apply, InpaintModelConditioning...: follow our side only
            elif "conditioning" in inputs or "cond1" in inputs:
                keys = [k for k in inputs if k.startswith("cond") and k != "cond2_negative"]
            else:
                keys = [k for k in inputs if k not in _NOT_CONDITIONING]
            children = []
            for key in keys:
                linked = inputs.get(key)
                if is_link(linked):
                    children.append(self.target(current, key, linked))
            stack.extend(reversed(children))
        if len(found) == 1:
            return found[0]  # exactly as written
        if found:
            return "\n".join(text.rstrip("\n") for text in found)
        return "" if any_encoder else None

    # -- samplers --

    def is_sampler(self, node_id: str) -> bool:
        kind = self.kind(node_id)
        if kind in _CORE_SAMPLERS:
            return True
        inputs = self.inputs(node_id)
        has_latent = any(key in inputs for key in _LATENT_INPUTS[:1]) or ("latent" in inputs and "Sampler" in kind)
        return has_latent and len(_SAMPLING_INPUTS & inputs.keys()) >= 2 and "Upscale" not in kind

    def latent_upstream(self, node_id: str):
        """What the latent came from (through decode/upscale/encode of hires fixes), never through
        model or conditioning chains: those say nothing about which pass came first."""
        names = [name for name in _LATENT_INPUTS if name in self.inputs(node_id)]
        return self.upstream(node_id, names, _NOT_LATENT) if names else iter(())

    def first_pass_sampler(self) -> str | None:
        """The sampler that starts from noise: hires-fix/refiner passes have another sampler
        upstream of their latent. With several chains, the one with the most passes after it."""
        samplers = sorted((n for n in self.nodes if self.is_sampler(n)), key=node_order)[:256]
        if not samplers:
            return None
        sampler_set = set(samplers)
        roots_of: dict[str, list[str]] = {}
        for node_id in samplers:
            roots_of[node_id] = [up for up in self.latent_upstream(node_id) if up in sampler_set]
        roots = [n for n in samplers if not roots_of[n]] or samplers
        followers = {root: sum(root in ups for ups in roots_of.values()) for root in roots}
        best = max(followers.values())
        return next(root for root in roots if followers[root] == best)

    def later_passes(self, first: str) -> list[str]:
        passes = [n for n in self.nodes if n != first and self.is_sampler(n) and first in set(self.latent_upstream(n))]
        return sorted(passes, key=node_order)[:8]

    def sampling(self, node_id: str) -> dict:
        """seed, steps, cfg, sampler, scheduler, denoise of one sampler node, whatever its kind."""
        kind = self.kind(node_id)
        inputs = self.inputs(node_id)
        out: dict = {"sampler_node": kind}
        if kind == "SamplerCustomAdvanced" or ("guider" in inputs and "sigmas" in inputs):
            noise = self.linked(node_id, "noise")
            if noise is not None:
                out["seed"] = self.value(noise, "noise_seed") if "noise_seed" in self.inputs(noise) else self.value(noise, "seed")
            guider = self.linked(node_id, "guider")
            if guider is not None:
                guider_inputs = self.inputs(guider)
                for key in ("cfg", "cfg_conds"):
                    if key in guider_inputs:
                        out["cfg"] = self.value(guider, key)
                        break
        else:
            for key in ("seed", "noise_seed"):
                if key in inputs:
                    out["seed"] = self.value(node_id, key)
                    break
            out["cfg"] = self.value(node_id, "cfg")
            out["steps"] = self.value(node_id, "steps")
            out["sampler"] = self.value(node_id, "sampler_name")
            out["scheduler"] = self.value(node_id, "scheduler")
            out["denoise"] = self.value(node_id, "denoise")
            for key in ("start_at_step", "end_at_step"):
                if key in inputs:
                    out[key] = self.value(node_id, key)
        if out.get("sampler") is None and isinstance(inputs.get("sampler"), str):
            out["sampler"] = inputs["sampler"]
        if out.get("sampler") is None and "sampler" in inputs:
            chosen = self.linked(node_id, "sampler")
            if chosen is not None:
                out["sampler"] = self.value(chosen, "sampler_name") if "sampler_name" in self.inputs(chosen) else _SAMPLER_CLASSES.get(self.kind(chosen), self.kind(chosen))
        if "sigmas" in inputs and out.get("steps") is None:
            sigmas = self.linked(node_id, "sigmas")
            for _ in range(8):
                if sigmas is None:
                    break
                sigma_inputs = self.inputs(sigmas)
                if "steps" in sigma_inputs or self.kind(sigmas) in _SCHEDULER_CLASSES:
                    out["steps"] = self.value(sigmas, "steps")
                    out["scheduler"] = self.value(sigmas, "scheduler") if "scheduler" in sigma_inputs else _SCHEDULER_CLASSES.get(self.kind(sigmas), self.kind(sigmas))
                    if "denoise" in sigma_inputs:
                        out["denoise"] = self.value(sigmas, "denoise")
                    break
                sigmas = next((self.linked(sigmas, key) for key in _SIGMA_PASSTHROUGH if is_link(sigma_inputs.get(key))), None)
        return {key: value for key, value in out.items() if value is not None}

    def conditioning_holder(self, node_id: str) -> str:
        """The node whose inputs hold positive/negative: a guider for SamplerCustomAdvanced, a pipe
        node for pipe samplers, else the sampler itself."""
        inputs = self.inputs(node_id)
        if "positive" in inputs or "negative" in inputs:
            return node_id
        for key in ("guider", "basic_pipe", "pipe", "sdxl_tuple"):
            linked = self.linked(node_id, key)
            if linked is not None:
                return linked
        return node_id

    def prompts(self, sampler: str) -> tuple[str | None, str | None]:
        holder = self.conditioning_holder(sampler)
        inputs = self.inputs(holder)
        positive_key = next((key for key in ("positive", "conditioning", "cond1") if key in inputs), None)
        positive = self.prompt(holder, positive_key, "positive") if positive_key else None
        if positive_key == "cond1" and "cond2" in inputs:
            second = self.prompt(holder, "cond2", "positive")
            if second:
                positive = f"{positive}\n{second}" if positive else second
        negative = self.prompt(holder, "negative", "negative") if "negative" in inputs else None
        return positive, negative

    def model(self, sampler: str) -> tuple[str | None, list]:
        """The checkpoint/UNet feeding the sampler's model (through LoRA loaders, patches...), and
        the LoRAs on the way."""
        holder = self.conditioning_holder(sampler) if "model" not in self.inputs(sampler) else sampler
        names = [key for key in self.inputs(holder) if "model" in key or key in ("basic_pipe", "pipe", "sdxl_tuple")]
        loras = []
        candidates = [holder] if holder != sampler else []  # a loader that is also the pipe (Easy-Use, Efficient)
        for node_id in [*candidates, *self.upstream(holder, names or None)]:
            inputs = self.inputs(node_id)
            lora = inputs.get("lora_name")
            if isinstance(lora, str) and lora.lower() != "none":
                loras.append({k: inputs[k] for k in ("lora_name", "strength_model", "strength_clip") if k in inputs and not is_link(inputs[k])})
            for key, value in inputs.items():
                if key.startswith("lora_") and isinstance(value, dict) and value.get("on") and isinstance(value.get("lora"), str):
                    loras.append({"lora_name": value["lora"], "strength_model": value.get("strength")})
            keys = _MODEL_KEYS + (("model_name",) if re.search(r"checkpoint|unet|diffusion", self.kind(node_id), re.I) else ())
            for key in keys:
                if key in inputs:
                    name = self.value(node_id, key)
                    if isinstance(name, str) and name:
                        return name, loras
        return None, loras

    def size(self, sampler: str) -> tuple:
        """Width and height of the empty latent the first pass started from (None for img2img)."""
        for node_id in self.latent_upstream(sampler):
            kind = self.kind(node_id)
            if self.is_sampler(node_id):
                continue
            inputs = self.inputs(node_id)
            if not re.search(r"latent|empty|resolution|size|aspect|loader", kind, re.I):
                continue
            for width_key, height_key in (("width", "height"), ("empty_latent_width", "empty_latent_height")):
                if width_key in inputs and height_key in inputs:
                    width, height = self.value(node_id, width_key), self.value(node_id, height_key)
                    if width is not None and height is not None:
                        return width, height
            for key in ("dimensions", "resolution"):
                text = inputs.get(key)
                match = _DIMENSIONS.search(text) if isinstance(text, str) else None
                if match:
                    return int(match.group(1)), int(match.group(2))
        return None, None

    def first_value(self, kinds: tuple, key: str):
        for node_id in sorted(self.nodes, key=node_order):
            if self.kind(node_id) in kinds and key in self.inputs(node_id):
                return self.value(node_id, key)
        return None


def from_graph(data: dict, column: str, workflow=None) -> dict:
    """An API-format graph (and the editor's workflow beside it, if any) -> raw generation fields."""
    graph = Graph(data, column, workflow)
    sampler = graph.first_pass_sampler()
    if sampler is None:
        raise RowRejected(column, f"ComfyUI graph in {column} has no sampler node")
    sampling = graph.sampling(sampler)
    positive, negative = graph.prompts(sampler)
    width, height = graph.size(sampler)
    model, loras = graph.model(sampler)
    extra: dict = {}
    for key in ("sampler_node", "scheduler", "denoise", "start_at_step", "end_at_step"):
        if key in sampling:
            extra[key] = sampling[key]
    if graph.guidance is not None:
        extra["guidance"] = graph.guidance
    clip_skip = graph.first_value(("CLIPSetLastLayer",), "stop_at_clip_layer")
    if clip_skip is not None:
        extra["stop_at_clip_layer"] = clip_skip
    if loras:
        extra["loras"] = loras
    vae = graph.first_value(("VAELoader",), "vae_name")
    if vae is not None:
        extra["vae_name"] = vae
    upscaler = graph.first_value(("UpscaleModelLoader",), "model_name")
    if upscaler is not None:
        extra["upscale_model"] = upscaler
    passes = []
    for later in graph.later_passes(sampler):
        details = graph.sampling(later)
        passes.append({key: details[key] for key in ("sampler_node", "seed", "steps", "cfg", "sampler", "scheduler", "denoise") if key in details})
    if passes:
        extra["later_passes"] = passes
    scale = graph.first_value(("LatentUpscaleBy", "ImageScaleBy"), "scale_by")
    if scale is not None and passes:
        extra["scale_by"] = scale
    return {
        "prompt": positive,
        "negative_prompt": negative,
        "seed": sampling.get("seed"),
        "steps": sampling.get("steps"),
        "cfg": sampling.get("cfg"),
        "sampler": sampling.get("sampler"),
        "scheduler": sampling.get("scheduler"),
        "width": width,
        "height": height,
        "model": model,
        "generator": "ComfyUI",
        "extra": extra,
    }


# --- the editor's workflow -----------------------------------------------------------------------

_CONTROL = {"fixed", "increment", "decrement", "randomize"}
# widget names in widgets_values order (ComfyUI's core nodes); "*" marks the seed widget that the
# frontend follows with a control_after_generate value
_WIDGETS = {
    "KSampler": ("seed*", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": ("add_noise", "noise_seed*", "steps", "cfg", "sampler_name", "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"),
    "SamplerCustom": ("add_noise", "noise_seed*", "cfg"),
    "RandomNoise": ("noise_seed*",),
    "KSamplerSelect": ("sampler_name",),
    "BasicScheduler": ("scheduler", "steps", "denoise"),
    "KarrasScheduler": ("steps", "sigma_max", "sigma_min", "rho"),
    "CFGGuider": ("cfg",),
    "FluxGuidance": ("guidance",),
    "CLIPTextEncode": ("text",),
    "CLIPTextEncodeSDXL": ("width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g", "text_l"),
    "CLIPTextEncodeFlux": ("clip_l", "t5xxl", "guidance"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "EmptySD3LatentImage": ("width", "height", "batch_size"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CheckpointLoader": ("config_name", "ckpt_name"),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
    "CLIPSetLastLayer": ("stop_at_clip_layer",),
    "VAELoader": ("vae_name",),
    "UpscaleModelLoader": ("model_name",),
    "LatentUpscale": ("upscale_method", "width", "height", "crop"),
    "LatentUpscaleBy": ("upscale_method", "scale_by"),
    "PrimitiveString": ("value",),
    "PrimitiveStringMultiline": ("value",),
    "PrimitiveInt": ("value*",),
    "PrimitiveFloat": ("value",),
}


def _widget_values(kind: str, values: list) -> dict:
    names = _WIDGETS.get(kind)
    if names is None:
        return {}
    out, index = {}, 0
    for name in names:
        if index >= len(values):
            break
        seed = name.endswith("*")
        out[name.rstrip("*")] = values[index]
        index += 1
        if seed and index < len(values) and values[index] in _CONTROL:
            index += 1
    return out


def workflow_to_graph(workflow: dict) -> dict:
    """The editor's workflow as an API-like graph, for the node types whose widget order is
    known. Muted (mode 2) and bypassed (mode 4) nodes are left out; Reroute and PrimitiveNode are
    resolved into the links and values they stand for."""
    nodes = workflow.get("nodes")
    links = workflow.get("links")
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        return {}
    origin: dict = {}
    for link in links if isinstance(links, list) else []:
        if isinstance(link, list) and len(link) >= 4:
            origin[link[0]] = (str(link[1]), link[2])
        elif isinstance(link, dict) and "id" in link:
            origin[link["id"]] = (str(link.get("origin_id")), link.get("origin_slot", 0))
    by_id = {str(node.get("id")): node for node in nodes if isinstance(node, dict)}

    def resolve(link_id, depth=0):
        """(node_id, slot) a link comes from, through Reroute nodes; or ("value", literal) from a PrimitiveNode."""
        if link_id not in origin or depth > MAX_DEPTH:
            return None
        node_id, slot = origin[link_id]
        node = by_id.get(node_id)
        if node is None:
            return None
        if node.get("type") == "Reroute":
            inputs = node.get("inputs") or []
            return resolve(inputs[0].get("link"), depth + 1) if inputs and isinstance(inputs[0], dict) else None
        if node.get("type") == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return ("value", values[0]) if values else None
        return (node_id, slot if isinstance(slot, int) else 0)

    graph = {}
    for node_id, node in by_id.items():
        kind = node.get("type")
        if not isinstance(kind, str) or node.get("mode") in (2, 4) or kind in ("Reroute", "PrimitiveNode", "Note", "MarkdownNote"):
            continue
        values = node.get("widgets_values")
        inputs = _widget_values(kind, values) if isinstance(values, list) else {}
        if isinstance(values, dict):  # some node packs save named widgets
            inputs.update({k: v for k, v in values.items() if isinstance(k, str)})
        for slot in node.get("inputs") or []:
            if not isinstance(slot, dict) or slot.get("link") is None:
                continue
            source = resolve(slot.get("link"))
            name = slot.get("name")
            if source is None or not isinstance(name, str):
                continue
            inputs[name] = source[1] if source[0] == "value" else [source[0], source[1]]
        graph[node_id] = {"class_type": kind, "inputs": inputs}
    return graph
