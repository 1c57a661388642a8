"""Free text in exported files: only what the study wrote before the run, in a grammar that
cannot state a count.

A label, a step name, a term, a section name, a line of plan.txt is text a person chose, so it
can say "3 died" as well as any cell can. Every string an exported file holds (a CSV's header
and string cells, results.json's keys and string values, plan.txt's lines) passes these rules
(docs/secure.md gives each with the attack it prevents):

* **characters**: printable ASCII, Latin letters (æ, ø, å, é …) and a few typographic symbols
  (``≥ ≤ – — … · × →``); nothing else — no digits of other scripts (``３ ٣ ³ ½ Ⅲ 𝟑``), no
  invisible or control characters;
* **no number words**: a word (split at anything not a letter and at camelCase) may not be a
  number in English or Danish (``three``, ``tre``, ``dozen``, ``handful``, ``twice`` …);
* **digits only from the study**: every run of digits is a number the study file declares (a
  number, a date's parts, ``min_cell``) or lies in a code its codelists declare (``C10AA``,
  ``DI21``); a handful of fixed fragments of hpcstudy's own text (``ICD-10``, ``(0/1)``) are
  taken out first. The study file is the one kept with the run (``OUT/private/study``), whose
  SHA-256 ``outputs.json`` records: the gate re-derives the declared numbers and codes from it
  (:func:`vocabulary`), so they cannot come from the data after the run;
* **bounded length**: 120 characters a value, 300 a line of plan.txt.

Interval keys (a Lexis ``age_band`` or ``period``: ``40-49``, ``2010-2014``, ``80+``) are
numbers, not text: they may only take that shape (:func:`interval_problems`).

What these rules cannot see — a word that means a number only to its reader ("few", "I"),
a number written into the study's parameters after looking at the data — stays the output
checker's judgement (docs/secure.md).
"""

from __future__ import annotations

import datetime
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

MAX_VALUE = 120
MAX_LINE = 300
SYMBOLS = frozenset("≥≤–—…·×→")
KEPT = "private/study"    # the study file, kept with the run (never exported)

# zero is no small count (0 is shown everywhere), so "none" and "nobody" may stay
_EN = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
       "fifteen sixteen seventeen eighteen nineteen twenty thirty forty fourty fifty sixty "
       "seventy eighty ninety hundred hundreds thousand thousands million dozen dozens "
       "handful couple few several once twice thrice pair trio quartet quintet triple "
       "quadruple tens")
_DA = ("én ét een tre fire fem seks syv otte ni ti elleve tolv tretten fjorten femten "
       "seksten sytten atten nitten tyve tredive fyrre halvtreds tres halvfjerds firs "
       "halvfems hundrede tusind dusin få enkelte")
NUMBER_WORDS = frozenset(_EN.split()) | frozenset(_DA.split())
# fixed pieces of hpcstudy's own text that hold digits no study declares
FRAGMENTS = (re.compile(r"\(Danish ICD-10\), 19 categories"), re.compile(r"\(0/1\)"),
             re.compile(r"\bgroup=[01]\b"), re.compile(r"\bICD-?(10|8)\b"),
             re.compile(r"\b(icd10|icd8)\b"),
             # the LPR patient types the study names in words, as render writes their codes
             re.compile(r"patient type [0-3](/[0-3])*\b"),
             # the outcome window's default start (render's "in days [1, …] after index")
             re.compile(r"in days \[1, (?=(…|\d+)\] after index)"),
             # the data's last day (render's "end of data …"): the data's, not the study's
             re.compile(r"end of data \d{4}-\d{2}-\d{2}"))
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FREE_FIELDS = {"label", "description"}
INTERVAL = re.compile(r"\d{1,4}(\.\d+)?(-\d{1,4}(\.\d+)?|\+)?")
QUARTER = re.compile(r"\d{4}-Q[1-4]")   # a measure's interval: quarter (2010-Q4)
_WORD = re.compile(r"[^\W\d_]+")
_DIGITS = re.compile(r"\d+")
_CODE = re.compile(r"[A-Za-z0-9]*[0-9][A-Za-z0-9]*")


@dataclass(frozen=True)
class Vocabulary:
    """What a study declares that text may repeat: numbers (as digit strings) and codes."""
    numbers: frozenset[str]
    codes: frozenset[str]
    names: frozenset[str] = frozenset()


def vocabulary(doc, min_cell: int | None = None) -> Vocabulary:
    """The numbers and codes a parsed study document declares (every numeric value, every
    date's parts, every code of its codelists with the LPR's ``D`` prefix), and ``min_cell``."""
    from ..study.language import CHARLSON_WINDOW

    # 0, and hpcstudy's own defaults that the plan states (the Charlson look-back)
    numbers = {"0", *(str(abs(x)) for x in CHARLSON_WINDOW)}
    codes: set[str] = set()
    names: set[str] = set()
    if min_cell is not None:
        numbers.add(str(min_cell))

    def number(v):
        if isinstance(v, bool):
            return
        if isinstance(v, int | float):
            numbers.update(_DIGITS.findall(f"{v:g}" if isinstance(v, float) else str(v)))
            if isinstance(v, float) and v.is_integer():
                numbers.add(str(int(v)))
        elif isinstance(v, datetime.date):
            numbers.update({f"{v.year}", f"{v.month:02d}", f"{v.day:02d}", f"{v.month}",
                            f"{v.day}"})

    def name(v: str, path) -> None:
        # an identifier the study declares (type2_diabetes, washout_2y): its digits are part of
        # a name, not a number; a label or a description is free text and vouches for nothing
        if NAME.fullmatch(v) and not set(path) & FREE_FIELDS:
            names.add(v.lower())

    def walk(o, path=()):
        if isinstance(o, dict):
            for k, v in o.items():
                if isinstance(k, str):
                    name(k, path)
                walk(v, (*path, str(k)))
        elif isinstance(o, list):
            for x in o:
                walk(x, path)
        elif isinstance(o, str):
            if "codes" in path or (path and path[-1] == "code"):
                c = o.strip().rstrip("*").upper()
                if c:
                    # the plan writes a WHO code's dot away (I11.0 is lpr[DI110*])
                    bare = c.replace(".", "")
                    codes.update({c, "D" + c, bare, "D" + bare})
            elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", o.strip()):   # a date given as text
                y, m, d = o.strip().split("-")
                numbers.update({y, m, d, str(int(m)), str(int(d))})
            else:
                name(o.strip(), path)
        else:
            number(o)

    walk(doc)
    return Vocabulary(frozenset(numbers), frozenset(codes), frozenset(names))


def parse(data: bytes):
    """A study document from the bytes of a study file (YAML) or of a Python study (JSON)."""
    text = data.decode("utf-8")
    return json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)


def as_record(v: Vocabulary) -> dict:
    """The vocabulary as outputs.json records it (sorted lists)."""
    return {"numbers": sorted(v.numbers), "codes": sorted(v.codes), "names": sorted(v.names)}


def from_record(rec) -> Vocabulary | None:
    if not isinstance(rec, dict) or set(rec) != {"numbers", "codes", "names"} or not all(
            isinstance(x, list) and all(isinstance(y, str) for y in x) for x in rec.values()):
        return None
    return Vocabulary(frozenset(rec["numbers"]), frozenset(rec["codes"]),
                      frozenset(rec["names"]))


def kept_study(out: Path, manifest: dict) -> tuple[object | None, str | None]:
    """The study document kept with the run, parsed, or why it cannot be trusted."""
    path = Path(out) / KEPT
    if path.is_symlink() or not path.is_file():
        return None, (f"{KEPT} (the study file kept with the run) is missing: the text in the "
                      "outputs cannot be vouched for")
    data = path.read_bytes()
    want = (manifest.get("study") or {}).get("sha256") if isinstance(manifest, dict) else None
    import hashlib

    if hashlib.sha256(data).hexdigest() != want:
        return None, (f"{KEPT} differs from the study whose SHA-256 outputs.json records: the "
                      "text in the outputs cannot be vouched for")
    try:
        doc = parse(data)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        return None, f"{KEPT} cannot be read ({type(e).__name__})"
    return doc, None


def _words(text: str) -> list[str]:
    out = []
    for w in _WORD.findall(text):
        out += [p.lower() for p in re.findall(r"[A-ZÆØÅ]?[^\W\d_A-ZÆØÅ]+|[A-ZÆØÅ]+(?![a-zæøå])",
                                              w)] or [w.lower()]
        out.append(w.lower())
    return out


def problems(value: str, vocab: Vocabulary | None, where: str,
             limit: int = MAX_VALUE) -> list[str]:
    """Why ``value`` may not leave as free text (empty when it may), one line each; without a
    vocabulary (the data authority's own text) its digits are not looked at."""
    out = []
    show = value if len(value) <= 60 else value[:57] + "..."
    if len(value) > limit:
        out.append(f"{where}: text {show!r} is {len(value)} characters, over {limit}")
    for ch in dict.fromkeys(value):
        if (" " <= ch <= "~") or ch in SYMBOLS:
            continue
        if ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN") and \
                unicodedata.numeric(ch, None) is None:
            continue
        name = unicodedata.name(ch, f"U+{ord(ch):04X}")
        out.append(f"{where}: text {show!r} holds {name} (U+{ord(ch):04X}): only letters, "
                   "ASCII digits and punctuation may leave")
    words = sorted({w for w in _words(value) if w in NUMBER_WORDS})
    if words:
        out.append(f"{where}: text {show!r} holds the number word(s) {words}: a label may "
                   "not state a number")
    if vocab is None:
        return out
    rest = value
    for f in FRAGMENTS:
        rest = f.sub(" ", rest)
    # a level of a declared covariate (a model term "region=1084"): a category, not a count
    rest = re.sub(r"\b([A-Za-z_][A-Za-z0-9_]*)=-?\d+\b",
                  lambda m: " " if m.group(1).lower() in vocab.names else m.group(0), rest)
    # a name the study declares, whole (type2_diabetes, washout_2y): its digits name, not count
    rest = NAME.sub(lambda m: " " if m.group(0).lower() in vocab.names else m.group(0), rest)
    bad = []
    for tok in _CODE.findall(rest):
        if tok.upper() in vocab.codes:
            continue
        bad += [d for d in _DIGITS.findall(tok) if d not in vocab.numbers]
    if bad:
        out.append(f"{where}: text {show!r} holds the number(s) {sorted(set(bad))}, which the "
                   "study does not declare: text may repeat only the study's own numbers and "
                   "codes")
    return out


def interval_problems(value, where: str) -> list[str]:
    """A numeric band key (``40-49``, ``80+``, an integer): nothing else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return []
    if isinstance(value, str) and (INTERVAL.fullmatch(value) or QUARTER.fullmatch(value)):
        return []
    return [f"{where}: {value!r} is not a band of numbers (such as 40-49 or 80+)"]


def strings(obj, where: str):
    """(where, text) of every string in a JSON value, keys included."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{where}.{k}" if where else str(k), str(k)
            yield from strings(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list):
        for i, x in enumerate(obj, 1):
            yield from strings(x, f"{where}[{i}]")
    elif isinstance(obj, str):
        yield where, obj
