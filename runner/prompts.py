"""The prompt as the tool meant it: A1111's syntax, LoRA tags, embeddings, clip skip, long prompts.

- Attention: `(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.3)`, `\\(` for a literal
  bracket, unbalanced brackets closed at the end: A1111's grammar (modules/prompt_parser.py,
  `parse_prompt_attention`), read here into (text, weight) fragments. The weighting itself and
  prompts past 77 tokens (75-token chunks, each with its own start/end tokens, concatenated as A1111
  does) are compel's: its fragments-and-weights API, not a hand-written encoder. compel's weighting
  is not A1111's arithmetic (A1111 scales token embeddings and restores their mean; compel blends
  towards the embedding without the fragment), so a weight pushes the same way, not by the same
  amount.
- `<lora:name:weight>` (and `<lyco:...>`): that file from --lora-dir at that weight (diffusers'
  load_lora_weights: kohya and diffusers formats); the tag itself is removed from the text, as A1111
  does. `<hypernet:...>` and prompt editing (`[from:to:when]`, `[a|b]`) are not supported in
  diffusers pipelines and are reported, with the text that was used instead.
- Embeddings: every embedding file in --embeddings-dir whose name appears in the prompt or the
  negative prompt (A1111's rule: the file name is the word) is loaded (diffusers'
  load_textual_inversion: A1111 .pt/.safetensors and diffusers formats; SDXL `clip_l`/`clip_g`).
- Clip skip N (SD 1.x): the text encoder's output N-1 layers before the last, through its final
  layer norm, exactly A1111's `hidden_states[-N]`: done by running only the first layers.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\\]|\\\\|\\|   # escaped brackets and backslashes are text
    \(|\[|                         # open
    :\s*([+-]?[.\d]+)\s*\)|        # (text:1.2) closes with a weight
    \)|\]|                         # close
    [^\\()\[\]:]+|                 # text
    :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_EDIT = re.compile(r"\[([^\[\]:|]*):([^\[\]:|]*):\s*([0-9]*\.?[0-9]+)\s*\]")
_EDIT_ADD = re.compile(r"\[([^\[\]:|]+):\s*([0-9]*\.?[0-9]+)\s*\]")
_ALTERNATE = re.compile(r"\[([^\[\]:]*\|[^\[\]:]*)\]")


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111's attention syntax -> [(text, weight)], runs of equal weight merged; "BREAK" comes out
    as ("BREAK", -1) as in A1111."""
    fragments: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(fragments))
        elif token == "[":
            square_open.append(len(fragments))
        elif weight is not None and round_open:
            try:
                scale(round_open.pop(), float(weight))
            except ValueError:  # "(word:1.2.3)": A1111 would fail; the text stays
                fragments.append([token, 1.0])
        elif token == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    fragments.append(["BREAK", -1])
                fragments.append([part, 1.0])
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    if not fragments:
        fragments = [["", 1.0]]
    merged: list[list] = [fragments[0]]
    for text_part, weight in fragments[1:]:
        if weight == merged[-1][1]:
            merged[-1][0] += text_part
        else:
            merged.append([text_part, weight])
    return [(text_part, float(weight)) for text_part, weight in merged]


@dataclass
class NetworkTag:
    kind: str  # lora, lyco, hypernet, ...
    name: str
    weight: float
    text: str  # as written


@dataclass
class ParsedPrompt:
    """A prompt after A1111's preprocessing: the text the encoder sees and what was taken out."""

    text: str  # tags removed, editing resolved
    fragments: list[tuple[str, float]]
    networks: list[NetworkTag] = field(default_factory=list)
    not_honoured: list[str] = field(default_factory=list)

    @property
    def weighted(self) -> bool:
        return any(weight != 1.0 for _, weight in self.fragments)


def _weight(value: str) -> float | None:
    value = value.strip()
    if "=" in value:  # named arguments: te=0.8, unet=0.5
        value = value.split("=", 1)[1]
    try:
        return float(value)
    except ValueError:
        return None


def parse_prompt(text: str | None, steps: int = 20) -> ParsedPrompt:
    text = text or ""
    not_honoured: list[str] = []
    networks: list[NetworkTag] = []

    def network(match) -> str:
        kind, args = match.group(1).lower(), match.group(2).split(":")
        name = args[0].strip()
        weights = [w for w in (_weight(arg) for arg in args[1:]) if w is not None]
        weight = weights[0] if weights else 1.0
        networks.append(NetworkTag(kind, name, weight, match.group(0)))
        if kind in ("lora", "lyco") and len(set(weights)) > 1:
            not_honoured.append(f"{match.group(0)}: separate text-encoder and UNet weights; {weight:g} used for both")
        elif kind not in ("lora", "lyco"):
            not_honoured.append(f"{match.group(0)}: {kind} networks are not supported; left out")
        return ""

    text = _EXTRA_NETWORK.sub(network, text)

    def edit(match) -> str:
        before, after, when = match.group(1), match.group(2), float(match.group(3))
        switch = when if when < 1 else when / max(steps, 1)
        used = before if switch >= 0.5 else after
        not_honoured.append(f"prompt editing {match.group(0)}: diffusers has no per-step prompts; used {used.strip() or 'nothing'!r} throughout")
        return used

    def edit_add(match) -> str:
        after, when = match.group(1), float(match.group(2))
        switch = when if when < 1 else when / max(steps, 1)
        used = "" if switch >= 0.5 else after
        not_honoured.append(f"prompt editing {match.group(0)}: diffusers has no per-step prompts; used {used.strip() or 'nothing'!r} throughout")
        return used

    def alternate(match) -> str:
        used = match.group(1).split("|")[0]
        not_honoured.append(f"alternation {match.group(0)}: diffusers has no per-step prompts; used {used.strip()!r} throughout")
        return used

    for _ in range(4):  # nested editing resolves from the inside out
        changed = _EDIT.sub(edit, text)
        changed = _EDIT_ADD.sub(edit_add, changed)
        changed = _ALTERNATE.sub(alternate, changed)
        if changed == text:
            break
        text = changed
    fragments = parse_attention(text)
    if any(weight == -1 for _, weight in fragments):
        not_honoured.append("BREAK: compel cannot start a new 75-token chunk on demand; read as a space")
        fragments = [(" " if weight == -1 else part, 1.0 if weight == -1 else weight) for part, weight in fragments]
    fragments = [(part, weight) for part, weight in fragments if part or len(fragments) == 1]
    return ParsedPrompt(text="".join(part for part, _ in fragments), fragments=fragments or [("", 1.0)], networks=networks,
                        not_honoured=not_honoured)


# --- embeddings -------------------------------------------------------------------------------------


EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")


def embedding_files(folder) -> dict[str, object]:
    """name -> file of every embedding in a folder (any depth), as A1111 lists them."""
    from pathlib import Path

    root = Path(folder) if folder else None
    if root is None or not root.is_dir():
        return {}
    return {p.stem: p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES}


def embeddings_named(texts, available: dict) -> dict[str, object]:
    """The embeddings whose names occur in any of the texts as a whole word (case-insensitive, as
    A1111's tokenized lookup is)."""
    found = {}
    for name, path in available.items():
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)
        if any(text and pattern.search(text) for text in texts):
            found[name] = path
    return found


def embedding_token(name: str) -> str:
    """The token an embedding is loaded under: its name, lower-cased (CLIP's tokenizer lower-cases
    the prompt), in brackets no prompt word has."""
    return f"<emb:{name.lower()}>"


def spell_embeddings(text: str, tokens: dict) -> str:
    """Each embedding's name (any case, a whole word) replaced by its token."""
    for name, token in tokens.items():
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", lambda _: token, text, flags=re.IGNORECASE)
    return text


# --- clip skip ----------------------------------------------------------------------------------------


def _layers_owner(text_encoder):
    """The module holding the encoder's `layers` (transformers >= 5.6 flattened CLIPTextModel)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.encoder


@contextlib.contextmanager
def clip_skip(text_encoder, skip: int | None):
    """Run only the first len(layers) - (skip - 1) layers: the output is then A1111's
    hidden_states[-skip], and CLIPTextModel's final layer norm still applies, as in A1111."""
    if not skip or skip <= 1:
        yield
        return
    owner = _layers_owner(text_encoder)
    layers = owner.layers
    keep = max(1, len(layers) - (skip - 1))
    import torch

    owner.layers = torch.nn.ModuleList(list(layers)[:keep])
    try:
        yield
    finally:
        owner.layers = layers


# --- conditioning -------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    embeds: object
    negative_embeds: object
    pooled: object = None
    negative_pooled: object = None

    @property
    def length(self) -> int:
        return int(self.embeds.shape[1])


class PromptEncoder:
    """Conditioning tensors for one loaded pipeline through compel."""

    def __init__(self, loaded, fast: bool = True):
        self.loaded = loaded
        self.fast = fast  # unweighted prompts of one window through diffusers' own encoder
        self._compels: dict = {}

    def _compel(self, which: int):
        if which not in self._compels:
            from compel import Compel, DiffusersTextualInversionManager, ReturnedEmbeddingsType

            pipe = self.loaded.pipe
            sdxl = self.loaded.family == "sdxl"
            tokenizer = pipe.tokenizer if which == 1 else pipe.tokenizer_2
            encoder = pipe.text_encoder if which == 1 else pipe.text_encoder_2
            kind = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if sdxl else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
            self._compels[which] = Compel(
                tokenizer=tokenizer, text_encoder=encoder, textual_inversion_manager=DiffusersTextualInversionManager(pipe) if which == 1 else None,
                truncate_long_prompts=False, returned_embeddings_type=kind, requires_pooled=which == 2, device=str(encoder.device),
            )
        return self._compels[which]

    @staticmethod
    def _conjunction(fragments):
        from compel.prompt_parser import Conjunction, FlattenedPrompt

        return Conjunction([FlattenedPrompt([(text, float(weight)) for text, weight in fragments])])

    def _embeds(self, compel, fragments):
        conditioning, _ = compel.build_conditioning_tensor_for_conjunction(self._conjunction(fragments))
        return conditioning

    def _fits(self, text: str) -> bool:
        """Whether a prompt (embeddings expanded) fits one 77-token window of every tokenizer."""
        pipe = self.loaded.pipe
        for tokenizer in [pipe.tokenizer] + ([pipe.tokenizer_2] if self.loaded.family == "sdxl" else []):
            expanded = pipe.maybe_convert_prompt(text, tokenizer) if hasattr(pipe, "maybe_convert_prompt") else text
            if len(tokenizer(expanded).input_ids) > tokenizer.model_max_length:
                return False
        return True

    def _plain(self, positive: str, negative: str, clip_skip_layers: int | None) -> Conditioning:
        """diffusers' own encode_prompt: what compel gives for unweighted prompts of one window
        (a test checks they are equal), at half the cost."""
        pipe = self.loaded.pipe
        device = pipe.text_encoder.device
        if self.loaded.family == "sdxl":
            embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
                prompt=positive, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative)
            return Conditioning(embeds, negative_embeds, pooled, negative_pooled)
        with clip_skip(pipe.text_encoder, clip_skip_layers):
            embeds, negative_embeds = pipe.encode_prompt(positive, device, 1, True, negative)
        return Conditioning(embeds, negative_embeds)

    def encode(self, positive: ParsedPrompt, negative: ParsedPrompt, clip_skip_layers: int | None = None) -> Conditioning:
        import torch

        pipe = self.loaded.pipe
        dtype = pipe.unet.dtype
        with torch.no_grad():
            if self.fast and not positive.weighted and not negative.weighted and self._fits(positive.text) and self._fits(negative.text):
                return self._plain(positive.text, negative.text, clip_skip_layers)
            if self.loaded.family != "sdxl":
                compel = self._compel(1)
                with clip_skip(pipe.text_encoder, clip_skip_layers):
                    embeds = self._embeds(compel, positive.fragments)
                    negative_embeds = self._embeds(compel, negative.fragments)
                embeds, negative_embeds = compel.pad_conditioning_tensors_to_same_length([embeds, negative_embeds])
                return Conditioning(embeds.to(dtype), negative_embeds.to(dtype))
            first, second = self._compel(1), self._compel(2)
            halves = [[self._embeds(compel, positive.fragments), self._embeds(compel, negative.fragments)] for compel in (first, second)]
            length = max(tensor.shape[1] for pair in halves for tensor in pair)
            for compel, pair in zip((first, second), halves):  # every tensor to the longest (an embedding one tokenizer lacks)
                longest = pair[0].new_zeros(1, length, pair[0].shape[2])
                pair[:] = compel.pad_conditioning_tensors_to_same_length(pair + [longest])[:2]
            embeds = torch.cat([halves[0][0], halves[1][0]], dim=-1)
            negative_embeds = torch.cat([halves[0][1], halves[1][1]], dim=-1)
            pooled = second.conditioning_provider.get_pooled_embeddings([positive.text])
            # An empty negative prompt is encoded as "" (A1111 and ComfyUI do that), not zeroed as
            # diffusers' SDXL pipeline does when it is given none.
            negative_pooled = second.conditioning_provider.get_pooled_embeddings([negative.text])
            return Conditioning(embeds.to(dtype), negative_embeds.to(dtype), pooled.to(dtype), negative_pooled.to(dtype))
