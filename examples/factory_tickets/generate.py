"""Generate labelled factory maintenance tickets for the built-in ``factory-tickets`` task.

    python examples/factory_tickets/generate.py --out examples/factory_tickets/data --seed 0 \\
        --train 2200 --dev 100 --test 200 --rl 400

Each ticket is built from facts (an asset tag, a fault of one category, its impact, whether
people are in danger) and phrases from ``ticket_phrases.py``; the label is computed from the same
facts, never parsed back from the text. Splits are disjoint (no ticket text appears twice)
and the same for the same seed. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ticket_phrases as P  # noqa: E402  (a sibling module; this file runs as a script)

# rl: fresh labelled prompts for the RL stage (after distillation the student solves every train prompt, which
# leaves on-policy RL nothing to learn from). Last, so that adding it leaves the other splits as they were.
SPLITS = ("train", "dev", "test", "rl")
DEFAULT_SIZES = {"train": 2200, "dev": 100, "test": 200, "rl": 400}
# Each split's first share, drawn in SPLITS order: the sizes the splits were first committed with. Tickets beyond a
# split's first share are drawn after every split's first share, so that a larger split leaves the others as they
# were (the train split grew from 1800 to 2200 in issue 25: the same dev, test and rl tickets, and the same first
# 1800 train tickets, as before).
FIRST_SHARE = {"train": 1800, "dev": 100, "test": 200, "rl": 400}
CATEGORIES = ("electrical", "mechanical", "hydraulic", "pneumatic", "control", "sensor")  # safety comes from danger
# impact kinds of a ticket with no danger, and how often they are drawn (L: low, XS: scrap and stopped)
KINDS = {"L": 0.2, "S": 0.3, "X": 0.1, "XS": 0.05, "D": 0.25, "R": 0.1}
SEVERITY = {"L": "low", "S": "high", "X": "high", "XS": "high", "D": "medium", "R": "medium"}
# the share of faults drawn whatever their usual impacts: the impact phrase, not the fault, must tell the severity
# and whether the line stopped (with every fault tied to its usual impacts a model learns "belt snapped" -> stopped
# and ignores "still running"; hand-written tickets showed it)
FREE_IMPACT = 0.5
# --long-form SHARE: that share of the tickets with an impact is written long-form (make_ticket's ``long``):
# sentences of what was seen and tried before whether the line runs, or after it. A 20-layer student read "still
# running" after one sentence but not after two of these, where its teacher did; trained on 0.35 long-form it read
# them, but the quick recipe's bundle did not score higher on the hand-written sets (issue 25), so the default
# splits are written without (0). With the impact always last, the teacher missed "X is down" opening a long
# hand-written ticket: so either place.
LONG_FORM = 0.0
TAG = re.compile(r"\b[A-Za-z]{2,6}-[0-9]{1,4}\b")


@dataclass(frozen=True)
class Facts:
    """What a ticket says happened; the label follows from these alone."""

    tag: str  # the asset tag as written (any case)
    category: str  # the fault's category, before danger overrides it
    kind: str  # a key of KINDS, or "danger"
    stopped_now: bool

    def label(self) -> dict:
        danger = self.kind == "danger"
        return {"asset": self.tag.upper(), "category": "safety" if danger else self.category,
                "severity": "critical" if danger else SEVERITY[self.kind], "line_stopped": self.stopped_now}


def _tag(rng: random.Random, avoid: str = "") -> tuple[str, str]:
    """A tag written in some case, and the equipment word for it; never equal to ``avoid`` (any case)."""
    while True:
        # a known machine most of the time; otherwise any prefix the task allows (2-6 letters), so that the
        # model learns the tag's shape rather than a list of prefixes
        if rng.random() < 0.6:
            prefix = rng.choice(sorted(P.EQUIPMENT))
            eq = P.EQUIPMENT[prefix]
        else:
            size = rng.choice([2, 3, 3, 3, 4, 4, 5, 6])
            prefix = "".join(rng.choice("ABCDEFGHIJKLMNOPRSTUVWXYZ") for _ in range(size))
            eq = rng.choice(P.GENERIC_EQ)
        number = str(rng.choice([rng.randint(1, 9), rng.randint(1, 99), rng.randint(1, 999), rng.randint(1, 9999)]))
        number = number.zfill(rng.choice([1, 1, 2, 2, 3])) if len(number) < 3 else number
        tag = f"{prefix}-{number}"
        if tag.upper() != avoid.upper():
            break
    style = rng.random()
    if style < 0.5:
        written = tag
    elif style < 0.75:
        written = tag.lower()
    elif style < 0.9:
        written = tag.capitalize()
    else:
        written = "".join(c.lower() if rng.random() < 0.5 else c for c in tag)
    return written, eq


def _fill(text: str, rng: random.Random) -> str:
    """Fill the generic slots of a phrase with random values."""
    slots = {"code": rng.choice(P.CODES), "alarm": rng.choice(P.ALARMS), "sid": rng.choice(P.SIDS),
             "n": str(rng.choice([2, 3, 5, 8, 10, 12, 15, 20, 30, 40, 45, 60, 75, 90])),
             "time": rng.choice(["6am", "7:30", "14:10", "2pm", "22:40", "start of shift", "midnight", "05:15"]),
             "name": rng.choice(P.NAMES), "line": str(rng.randint(1, 12))}
    return re.sub(r"\{(\w+)\}", lambda m: slots.get(m.group(1), m.group(0)), text)


def _roughen(text: str, rng: random.Random, rate: float) -> str:
    """Operator shorthand and typos, never inside a tag."""
    words = text.split(" ")
    for i, w in enumerate(words):
        if TAG.search(w) or not w.isalpha():
            continue
        low = w.lower()
        if low in P.SHORTHAND and rng.random() < 0.35:
            words[i] = rng.choice(P.SHORTHAND[low])
        elif len(w) > 3 and rng.random() < rate:
            j = rng.randrange(1, len(w) - 1)
            words[i] = rng.choice([w[:j] + w[j + 1] + w[j] + w[j + 2:], w[:j] + w[j + 1:], w[:j] + w[j] + w[j:]])
    return " ".join(words)


def make_ticket(rng: random.Random, long: random.Random | None = None, long_form: float = LONG_FORM
                ) -> tuple[str, Facts]:
    """One ticket text and the facts it was written from. ``long``: a second generator that writes a share
    (``long_form``) of the tickets with an impact long-form: one to three sentences of what was seen and tried
    (``P.ELABORATION``) either between the fault and the impact, which then comes last, or after the impact,
    which then follows the fault. Its draws are its own, so every ticket it leaves short is the one ``rng``
    alone writes."""
    tag, eq = _tag(rng)
    other = _tag(rng, avoid=tag)[0]  # at most one bystander asset per ticket
    danger = rng.random() < 1 / 7
    category = rng.choice(CATEGORIES)
    kind = "danger" if danger else rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    extra: list[str] = []
    if kind == "L":
        template = rng.choice(P.LOW if category == "mechanical" else [t for t in P.LOW if "{cosmetic}" not in t])
        main = template.format(tag=tag, part=rng.choice(P.PARTS[category]), pm=rng.choice(P.PM[category]),
                               q=_fill(rng.choice(P.QUESTIONS[category]), rng), cosmetic=rng.choice(P.COSMETIC),
                               n=rng.randint(2, 10))
        stopped, impact = False, ""
    else:
        if danger:
            fault = rng.choice(P.DANGER)
            stopped = rng.random() < 0.5
            impact = rng.choice(P.DANGER_STOPPED if stopped else P.DANGER_RUNNING)
        else:
            fits = [f for f in P.FAULTS[category] if set(kind) <= set(f[1])]
            free = rng.random() < FREE_IMPACT
            # any fault can stop a line; one that only ever stops it ("no power to the cabinet") never runs on
            anyway = [f for f in P.FAULTS[category] if "S" in kind or f[1] != "S"]
            fault, allowed = rng.choice(anyway if free or not fits else fits)
            if not free and not set(kind) <= set(allowed):  # no fault of this category has that impact
                kind = rng.choice([k for k in KINDS if k != "L" and set(k) <= set(allowed)])
            stopped = "S" in kind
            impact = (rng.choice(P.IMPACTS[kind]) if kind in P.IMPACTS and len(kind) > 1 and rng.random() < 0.3
                      else ", ".join(rng.choice(P.IMPACTS[k]) for k in kind))
            if category == "sensor" and rng.random() < 0.4:
                extra.append(rng.choice(P.SENSOR_ALARMS))
        main = rng.choice(P.FAULT_SENTENCES).format(tag=tag, f=fault, eq=eq, o=other)
    facts = Facts(tag, category, kind, stopped)
    severity = facts.label()["severity"]
    if other not in main and rng.random() < 0.3:
        extra.append(rng.choice(P.BYSTANDER).format(o=other))
    for _ in range(rng.choices([0, 1, 2], weights=[0.6, 0.3, 0.1])[0]):
        extra.append(rng.choice(P.DETAILS))
    rng.shuffle(extra)
    parts = [main, impact, *extra] if rng.random() < 0.7 else [main, *extra, impact]
    signoff = rng.random() < 0.3
    if signoff:
        parts.append(rng.choice(P.SIGNOFFS))
    sep = rng.choice([". ", ", ", " - ", "\n", "; ", " ", ". "])
    parts = [p for p in parts if p]
    filled = [_fill(p, rng) for p in parts]  # the ticket as rng alone writes it
    longer = None  # the same ticket long-form, as `long` rewrites it
    if long is not None and impact and long.random() < long_form:
        said = [_fill(x, long) for x in long.sample(P.ELABORATION, long.choice([1, 1, 2, 2, 3]))]
        i = parts.index(impact)
        body = filled[:i] + filled[i + 1:]
        if long.random() < 0.5:  # the impact last (before a signoff): what was seen and tried, then how it runs
            at = len(body) - 1 if signoff else len(body)
            longer = [*body[:at], *said, _fill(impact, long), *body[at:]]
        else:  # how it runs right after the fault, then what was seen and tried
            longer = [body[0], _fill(impact, long), *said, *body[1:]]
        long_sep = long.choice([". ", ". ", ", ", "; ", " - ", "\n"])
    # rng draws the same either way (so a ticket `long` leaves short is what rng alone writes); `long` roughens the
    # long one
    end = rng.choice(["", "", ".", "!", " ", "..."])
    head = ""
    # a greeting or URGENT ends in its own punctuation (or none), so it is joined by a space or a newline
    if rng.random() < 0.3:
        head = _fill(rng.choice(P.GREETINGS), rng) + rng.choice([" ", "\n"])
    if severity in ("high", "critical") and rng.random() < 0.2:
        head = rng.choice(P.URGENT) + rng.choice([" ", ": ", "!! ", "\n"]) + head
    rate = rng.choice([0.0, 0.0, 0.02, 0.05])
    text = _roughen(head + sep.join(filled) + end, rng, rate=rate)
    if longer is not None:
        text = _roughen(head + long_sep.join(longer) + end, long, rate=rate)  # type: ignore[arg-type]
    case = rng.random()
    text = text.lower() if case < 0.12 else text.upper() if case < 0.17 else text[:1].upper() + text[1:]
    return text, facts


def generate(seed: int, sizes: dict[str, int], first_share: dict[str, int] | None = None,
             long_form: float = LONG_FORM) -> dict[str, list[dict]]:
    """Labelled records per split: ``{"train": [{"input": ..., "label": ...}, ...], ...}``, deterministic for a seed
    (and ``long_form``: the share of tickets with an impact written long-form, see :func:`make_ticket`).

    Each split's first ``first_share`` tickets (default ``FIRST_SHARE``) are drawn in SPLITS order, then the rest of
    each split, so that a larger split leaves the others as they were."""
    first_share = FIRST_SHARE if first_share is None else first_share
    rng, long = random.Random(seed), random.Random(f"{seed}-long") if long_form else None
    seen: set[str] = set()
    records: list[dict] = []
    total, tries = sum(sizes.values()), 0
    while len(records) < total:
        tries += 1
        if tries > 50 * total + 1000:
            raise RuntimeError(f"only {len(records)} distinct tickets after {tries} tries; ask for fewer")
        text, facts = make_ticket(rng, long, long_form)
        key = " ".join(text.lower().split())  # "the same ticket" ignores case and spacing
        if key not in seen:
            seen.add(key)
            records.append({"input": text, "label": facts.label()})
    wanted = [s for s in SPLITS if s in sizes]
    first = {s: min(sizes[s], first_share.get(s, sizes[s])) for s in wanted}
    out: dict[str, list[dict]] = {}
    start = 0
    for split in wanted:
        out[split] = records[start:start + first[split]]
        start += first[split]
    for split in wanted:
        more = sizes[split] - first[split]
        out[split] += records[start:start + more]
        start += more
    return out


def distribution(records: list[dict]) -> dict[str, Counter]:
    """Counts of each label value, per field (the asset excepted)."""
    return {k: Counter(str(r["label"][k]).lower() for r in records) for k in ("category", "severity", "line_stopped")}


def write(out: Path, splits: dict[str, list[dict]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for train/dev/test.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--long-form", type=float, default=LONG_FORM, metavar="SHARE",
                    help="share of the tickets with an impact written long-form: what was seen and tried, before or "
                    "after how the line runs (default %(default)s)")
    for split in SPLITS:
        ap.add_argument(f"--{split}", type=int, default=DEFAULT_SIZES[split], help=f"tickets in {split}.jsonl")
    args = ap.parse_args(argv)
    if not 0 <= args.long_form <= 1:
        ap.error(f"--long-form is a share from 0 to 1, not {args.long_form}")
    splits = generate(args.seed, {s: getattr(args, s) for s in SPLITS}, long_form=args.long_form)
    write(args.out, splits)
    for split, records in splits.items():
        counts = distribution(records)
        print(f"{split}: {len(records)} tickets -> {args.out / (split + '.jsonl')}")
        for key, c in counts.items():
            print(f"  {key:<13}" + "  ".join(f"{v} {n}" for v, n in sorted(c.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
