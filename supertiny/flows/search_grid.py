"""Budget-driven search: the grid of candidates, the Pareto front and the recommendation.

A candidate is one way to make a deployable artifact: a starting model (the teacher pruned
to a depth and MLP width, or a student the user already has), an optional short knowledge
transfer, a quantization and a file format. :func:`expand` turns a :class:`SearchConfig`
into the candidates (skipping the quantization/format pairs that make no sense, with a
note); :mod:`supertiny.flows.search` makes and measures them; :func:`pareto_front` and
:func:`recommend` are pure functions over the measured points (dicts), so the choice is
testable without a model.

This module imports neither torch nor the exporters (only their light Configs), so the CLI can offer
its choices.

>>> pareto_front([{"q": 1, "s": 2}, {"q": 0, "s": 3}], [("q", "max"), ("s", "min")])
[0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supertiny import schema
from supertiny.errors import InvalidInputError
from supertiny.flows.recipe import parse_override
from supertiny.settings import Settings, recipe_checks, setting
from supertiny.stages.export.gguf import QUANT_TYPES as GGUF_QUANT_TYPES
from supertiny.stages.registry import get

FORMATS = ("gguf", "onnx")
LATENCY = {"ttft": ("ttft_ms", "min"), "decode": ("decode_tokens_per_s", "max")}  # the latency objective
# What the stages of a search run with besides the axes: less calibration and checking than the stages'
# defaults, since every candidate pays for them (a search compares candidates; the recipe that then makes
# the chosen one runs the stages as it says). `--set STAGE.KEY=VALUE` changes any of them.
STAGE_SETTINGS: dict[str, dict[str, Any]] = {
    "prune": {"calib_tokens": 1024, "eval_tokens": 256},
    "distill": {"loss": "fkl", "seed": 0},
    "quantize": {"eval_tokens": 256},
    "export-gguf": {"verify_tokens": 128},
    "export-onnx": {"verify_tokens": 128},
}


@dataclass(frozen=True)
class Quant:
    """One quantization a search may try: which stage applies it and what each format's exporter is told.

    ``stage``: ``export`` (the exporter quantizes), ``quantize`` (``supertiny quantize`` first, then the
    exporters carry its codes) or ``float`` (nothing quantized). ``formats`` maps a format to the
    exporter's ``quant`` value (``None``: the exporter's float default); a format missing here is skipped.
    """

    name: str
    stage: str
    formats: Mapping[str, str | None]
    quantize: Mapping[str, Any] | None = None  # the quantize stage's settings, for stage "quantize"


def _quants() -> dict[str, Quant]:
    table = {t: Quant(t, "export", {"gguf": t}) for t in GGUF_QUANT_TYPES}
    # group 32: the one int4 group llama.cpp's blocks carry exactly (Q4_0/Q4_1), and ONNX takes it too
    table["w4a16"] = Quant("w4a16", "quantize", {"gguf": "carry", "onnx": "carry"},
                           {"scheme": "w4a16", "group": 32})
    table["w8a8"] = Quant("w8a8", "quantize", {"gguf": "carry", "onnx": "carry"}, {"scheme": "w8a8"})
    table["int4"] = Quant("int4", "export", {"onnx": "int4"})
    table["int8"] = Quant("int8", "export", {"onnx": "int8"})
    table["none"] = Quant("none", "float", {"gguf": None, "onnx": "none"})  # GGUF f16, ONNX float32
    return table


QUANTS: dict[str, Quant] = _quants()


def quant_for(name: str) -> Quant:
    """The :class:`Quant` called ``name`` (llama.cpp types in any case); unknown names list the known ones."""
    q = QUANTS.get(name) or QUANTS.get(name.upper()) or QUANTS.get(name.lower())
    if q is None:
        raise InvalidInputError(f"unknown quantization {name!r}; known: {', '.join(QUANTS)}")
    return q


def _list(option: str, kind: type) -> Callable[[str], tuple[Any, ...]]:
    """A comma-separated option's parser (``30,16`` -> ``(30, 16)``)."""
    def parse(value: str) -> tuple[Any, ...]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise InvalidInputError(f"{option} is empty")
        try:
            return tuple(kind(v) for v in items)
        except ValueError:
            raise InvalidInputError(f"{option} takes {'whole numbers' if kind is int else 'numbers'} separated by "
                                    f"commas, got {value!r}") from None
    return parse


def _any_list(kind: type) -> schema.Check:
    return schema.expect(lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, kind) for x in v),
                         f"a list of {kind.__name__}")


@dataclass(frozen=True)
class SearchConfig(Settings):
    """What a search tries and how it measures; every value is checked here, before any work.

    ``layers`` and ``mlp`` are the prune stage's settings, ``kd_steps`` the distill stage's ``steps``
    (each level's value is checked by that stage's Config); ``quants`` name :data:`QUANTS`, which map
    onto the quantize stage's schemes and the exporters' quantizations. What the stages run with
    besides the axes: :data:`STAGE_SETTINGS`, and ``sets`` (``--set STAGE.KEY=VALUE``) on top.
    """

    layers: tuple[int, ...] = setting((), "Pruning levels: decoder layers kept, e.g. 30,20,16 (the teacher's depth: "
                                      "unpruned). A pruned model without --kd-steps scores ~0 on a task.",
                                      parse=_list("--layers", int), check=_any_list(int), example=(16,))
    mlp: tuple[float, ...] = setting((1.0,), "MLP width levels kept, fractions, e.g. 1,0.75.",
                                     parse=_list("--mlp", float), check=_any_list(float), example=(1.0, 0.75))
    quants: tuple[str, ...] = setting(("Q8_0", "Q4_0"), f"Quantizations: {', '.join(QUANTS)}. llama.cpp types go "
                                      "to GGUF, int4/int8 to ONNX, w4a16/w8a8 (`supertiny quantize`, int4 at group "
                                      "32) to both, none = float.", flag="--quant", parse=_list("--quant", str),
                                      check=_any_list(str), example=("Q4_0",))
    formats: tuple[str, ...] = setting(("gguf",), "Formats: gguf, onnx; a quantization a format cannot hold is "
                                       "skipped with a note.", parse=_list("--formats", str), check=_any_list(str),
                                       example=("gguf", "onnx"))
    vocabs: tuple[str, ...] = setting(("full",), "Vocabulary levels: full, or N: `supertiny trim-vocab --keep N` "
                                      "after the level's model (the tokens of --distill-data when given, plus the "
                                      "tokenizer's N most frequent), e.g. full,8000.", flag="--vocab",
                                      parse=_list("--vocab", str), check=_any_list(str), example=("full", "8000"))
    students: tuple[str, ...] = setting((), "A model you already made (e.g. a distilled student): tried as it is "
                                        "(repeatable).", flag="--student", multiple=True, off="", example=("s",))
    distill_data: str | None = setting(None, "Teacher data (`supertiny teach`) for a short knowledge transfer of "
                                       "every pruned level, and whose tokens a trimmed --vocab keeps.")
    kd_steps: int = setting(0, "Logit-KD (fkl) steps per pruned level (needs --distill-data; 0: candidates are the "
                            "raw pruned models).")
    latency: str = setting("ttft", "The latency objective: time to first token, or decode speed.",
                           choices=tuple(LATENCY), unknown="latency measure")
    task_limit: int = setting(20, "Records scored per candidate.")
    holdout: tuple[str, ...] = setting((), "A hand-written labelled set every candidate is also scored on, whole, "
                                       "beside --task-data (repeatable; a column per set, named by its file's "
                                       "stem).", flag="--holdout", multiple=True, off="", example=("real.jsonl",))
    agreement_tokens: int = setting(256, "Held-out tokens on which each candidate is compared with the teacher "
                                    "(0: off).")
    bench_repeats: int = setting(1, "Measured runs at the target's prompt length.")
    bench_new_tokens: int = setting(32, "Tokens decoded per measured run.")
    bench_requests: int | None = setting(None, "Requests in the latency test (default: the target's concurrency).")
    sets: tuple[str, ...] = setting((), "A stage's setting for every candidate, SECTION.KEY=VALUE as a recipe's "
                                    "(repeatable), e.g. prune.calib_tokens=2048.", flag="--set", multiple=True,
                                    off="", metavar="STAGE.KEY=VALUE", example=("prune.calib_tokens=2048",))

    def problems(self) -> list[str]:
        if not self.layers and not self.students:
            return ["nothing to try: give --layers (pruning levels of the teacher) or --student"]
        for name, option in (("mlp", "--mlp"), ("quants", "--quant"), ("formats", "--formats"), ("vocabs", "--vocab")):
            if not getattr(self, name):
                return [f"{option} is empty"]
        if any(n < 1 for n in self.layers):
            return [f"--layers counts decoder layers to keep (>= 1), got {list(self.layers)}"]
        if any(not 0 < f <= 1 for f in self.mlp):
            return [f"--mlp takes fractions of the MLP width in (0, 1], got {list(self.mlp)}"]
        try:
            object.__setattr__(self, "quants", tuple(dict.fromkeys(quant_for(q).name for q in self.quants)))
            self.stage_settings()  # every --set checked as the stage checks it
        except InvalidInputError as exc:
            return [str(exc)]
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            return [f"unknown format {bad[0]!r}; known: {', '.join(FORMATS)}"]
        bad_vocab = [v for v in self.vocabs if v != "full" and not (v.isdigit() and (int(v) > 0 or self.distill_data))]
        if bad_vocab:
            return [f"--vocab takes full or a count of tokens to keep (0 keeps only the task's: needs --distill-data), "
                    f"got {bad_vocab[0]!r}"]
        trims = any(v != "full" for v in self.vocabs)
        if self.kd_steps < 0 or (self.kd_steps > 0 and self.distill_data is None) or \
                (self.distill_data is not None and not self.kd_steps and not trims):
            return ["--kd-steps N (>= 1) needs --distill-data FILE, and --distill-data is read by --kd-steps or a "
                    "trimmed --vocab"]
        for name in ("task_limit", "bench_repeats"):
            if getattr(self, name) < 1:
                return [f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"]
        if self.bench_new_tokens < 2 or self.agreement_tokens < 0:
            return ["--bench-new-tokens must be >= 2, --agreement-tokens >= 0"]
        if self.bench_requests is not None and self.bench_requests < 1:
            return [f"--bench-requests must be >= 1, got {self.bench_requests}"]
        return []

    def stage_settings(self) -> dict[str, dict[str, Any]]:
        """What each stage runs with besides the axes: :data:`STAGE_SETTINGS`, then ``--set`` values (checked)."""
        out = {k: dict(v) for k, v in STAGE_SETTINGS.items()}
        for text in self.sets:
            stage, key, value = parse_override(text)
            checks = recipe_checks(get(stage).config)
            if key not in checks:
                raise InvalidInputError(f"--set {text}: {stage} has no setting {key!r}; known: {', '.join(checks)}")
            try:
                out.setdefault(stage, {})[key] = checks[key](value)
            except schema.Bad as exc:
                raise InvalidInputError(f"--set {text}: {exc}") from None
        return out

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """The Pareto objectives: quality up, the latency measure, size down."""
        return [("quality", "max"), LATENCY[self.latency], ("size_mb", "min")]


@dataclass(frozen=True)
class Candidate:
    """One point of the grid. ``source`` is ``"teacher"`` or a student's path; ``kd``: a short transfer first."""

    source: str
    layers: int
    mlp: float
    kd: bool
    quant: str
    format: str
    label: str = ""  # the student's short name
    vocab: str = "full"  # or trim-vocab's --keep N

    @property
    def name(self) -> str:
        start = self.label if self.source != "teacher" else f"L{self.layers}" + (
            f"-m{self.mlp:g}" if self.mlp < 1 else "")
        vocab = "" if self.vocab == "full" else f"-v{self.vocab}"
        return f"{start}{'-kd' if self.kd else ''}{vocab}-{self.quant}-{self.format}"

    @property
    def level(self) -> tuple[str, int, float, bool]:
        """What the candidates sharing a (pruned, distilled) model have in common."""
        return (self.source, self.layers, self.mlp, self.kd)


def expand(config: SearchConfig, teacher_layers: int, students: Mapping[str, tuple[str, int]] | None = None
           ) -> tuple[list[Candidate], list[str]]:
    """The candidates of ``config`` for a teacher of ``teacher_layers`` layers, and notes on skipped pairs.

    ``students`` maps each student path to (short name, its layer count). Raises InvalidInputError
    when a level asks for more layers than the teacher has, or when no pair is left to try.
    """
    too_deep = [n for n in config.layers if n > teacher_layers]
    if too_deep:
        raise InvalidInputError(f"--layers {','.join(map(str, too_deep))}: the teacher has {teacher_layers} layers")
    notes, pairs = [], []
    for q in config.quants:
        for f in config.formats:
            if f in QUANTS[q].formats:
                pairs.append((q, f))
            else:
                notes.append(f"skipped {q} x {f}: {q} has no {f} form (it goes to "
                             f"{', '.join(QUANTS[q].formats)})")
    if not pairs:
        raise InvalidInputError("no quantization fits a chosen format: " + "; ".join(notes))
    levels = [("teacher", n, m, config.kd_steps > 0 and (n < teacher_layers or m < 1), "")
              for n in dict.fromkeys(sorted(config.layers, reverse=True)) for m in dict.fromkeys(config.mlp)]
    levels += [(path, depth, 1.0, False, label) for path, (label, depth) in (students or {}).items()]
    return [Candidate(src, n, m, kd, q, f, label, v) for src, n, m, kd, label in levels
            for v in dict.fromkeys(config.vocabs) for q, f in pairs], notes


# -- choosing -------------------------------------------------------------------------------


def _better(a: float, b: float, direction: str) -> bool:
    return a > b if direction == "max" else a < b


def dominates(a: Mapping[str, Any], b: Mapping[str, Any], objectives: Sequence[tuple[str, str]]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    strictly = False
    for key, direction in objectives:
        if _better(b[key], a[key], direction):
            return False
        strictly = strictly or _better(a[key], b[key], direction)
    return strictly


def pareto_front(points: Sequence[Mapping[str, Any]], objectives: Sequence[tuple[str, str]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates; equal points are all kept.

    A point missing an objective (None or absent: it failed or was not measured) is never on
    the front and dominates nothing. ``objectives``: (key, ``"max"`` or ``"min"``) pairs.
    """
    for _, direction in objectives:
        if direction not in ("max", "min"):
            raise InvalidInputError(f"an objective's direction is 'max' or 'min', got {direction!r}")
    scored = [i for i, p in enumerate(points) if all(p.get(k) is not None for k, _ in objectives)]
    return [i for i in scored if not any(dominates(points[j], points[i], objectives) for j in scored if j != i)]


def overshoot(verdicts: Sequence[Mapping[str, Any]]) -> float:
    """How far a point misses its budgets: the sum of the relative misses of the failed ones (0: meets all)."""
    total = 0.0
    for v in verdicts:
        if v.get("passed") is False:
            m, limit = float(v["measured"]), float(v["limit"])
            total += m / limit - 1 if v["direction"] == "max" else limit / max(m, 1e-9) - 1
    return total


def recommend(points: Sequence[Mapping[str, Any]], latency: tuple[str, str] = LATENCY["ttft"],
              useful_share: float = 0.5) -> tuple[int | None, int | None]:
    """``(recommended, closest)``: among the measured points that meet every budget (``meets``), the highest
    ``quality``, ties broken by smaller ``size_mb`` then lower latency; ``closest`` (when none meets them) is
    the one with the smallest :func:`overshoot`, ties by higher quality, taken among the points that keep at
    least ``useful_share`` of the best quality (a model that fails the task is close to nothing worth
    deploying), or among all when none does. Either is None when no point qualifies.
    """
    key, direction = latency
    sign = 1 if direction == "min" else -1
    measured = [i for i, p in enumerate(points)
                if all(p.get(k) is not None for k in ("quality", "size_mb", key))]
    meeting = [i for i in measured if points[i].get("meets")]
    if meeting:
        return min(meeting, key=lambda i: (-points[i]["quality"], points[i]["size_mb"], sign * points[i][key])), None
    if not measured:
        return None, None
    best = max(points[i]["quality"] for i in measured)
    useful = [i for i in measured if points[i]["quality"] >= useful_share * best] if best > 0 else measured
    return None, min(useful, key=lambda i: (overshoot(points[i].get("verdicts", [])), -points[i]["quality"],
                                            points[i]["size_mb"]))
