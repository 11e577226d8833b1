"""Rule packs for distant labelling: spaCy ``Matcher`` patterns that find entities by shape.

Each rule has a name, an entity label and token patterns; a rule can also trim its
match (``title_per`` drops the title: "Dr. Jane Roe" → "Jane Roe"). Rules are switched
on and off by name (``DistantLabeller(rules=...)``, ``distant --rules``).
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from spacy.tokens import Span

TokenPattern = List[Dict[str, object]]

# A capitalised content word: "Acme", "IBM", "McDonald", "AT&T"; never a stop word.
CAP: Dict[str, object] = {"TEXT": {"REGEX": r"^[A-Z][\w.&'-]*$"}, "IS_STOP": False}
CAPS: Dict[str, object] = {**CAP, "OP": "+"}

LEGAL_SUFFIXES = (
    "inc", "inc.", "corp", "corp.", "corporation", "co", "co.", "ltd", "ltd.", "limited",
    "plc", "ag", "gmbh", "s.a.", "sa", "n.v.", "nv", "llc", "l.p.", "spa", "s.p.a.", "bhd",
)
ORG_HEADS = (
    "party", "university", "college", "bank", "association", "federation", "council",
    "ministry", "commission", "agency", "institute", "committee", "union", "club", "airlines",
    "airways", "motors", "exchange", "foundation", "society", "parliament", "senate",
    "congress", "assembly", "authority", "organisation", "organization", "group", "holdings",
    "united", "rovers", "wanderers", "athletic", "albion", "fc",
)
ORG_HEADS_OF = (
    "university", "bank", "ministry", "department", "council", "federation", "association",
    "institute", "board", "house", "church", "league",
)
PERSON_TITLES = (
    "mr", "mr.", "mrs", "mrs.", "ms", "ms.", "dr", "dr.", "prof", "prof.", "sir", "lord",
    "lady", "president", "senator", "sen.", "gov.", "governor", "minister", "premier",
    "chancellor", "judge", "gen.", "general", "king", "queen", "prince", "princess", "pope",
    "coach", "striker", "midfielder", "defender", "goalkeeper", "captain", "spokesman",
    "spokeswoman", "rev.", "st.",
)
EVENT_HEADS = (
    "cup", "open", "championship", "championships", "games", "olympics", "trophy",
    "tournament", "masters", "classic", "grand", "series", "award", "awards", "prize", "war",
)


def _keep(span: Span) -> Optional[Span]:
    return span


def _trim_title(span: Span) -> Optional[Span]:
    """Drop the leading person title; reject the match when nothing is left."""
    return span[1:] if len(span) > 1 else None


def _trim_event(span: Span) -> Optional[Span]:
    """Keep "Grand Prix" events whole; a bare "Grand" head is not an event."""
    if span[-1].lower_ == "grand":
        return None
    return span

# All-capital tokens that are rarely organisations: units, times, titles, Roman numerals.
NOT_ACRONYMS = frozenset(
    "AM PM GMT EST CET TV OK CEO CFO MP MPS PC ID II III IV VI VII VIII IX XI XII NB PS VS "
    "USD GBP DM FFR JPY YEN BST EDT PST UTC KM KG MB GB AD BC".split()
)


def _acronym(span: Span) -> Optional[Span]:
    """Keep an all-capital token unless the whole sentence is in capitals (a headline)."""
    if span.text.replace(".", "") in NOT_ACRONYMS:
        return None
    words = [t for t in span.doc if t.is_alpha and len(t) > 1]
    upper = sum(t.is_upper for t in words)
    return span if upper * 2 < len(words) else None


@dataclass(frozen=True)
class Rule:
    """One rule: token patterns that label their (trimmed) matches `label`."""

    name: str
    label: str
    description: str
    patterns: Tuple[TokenPattern, ...]
    trim: Callable[[Span], Optional[Span]] = _keep


RULES: Dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule(
            "legal_suffix_org", "ORG", "capitalised words + legal form: 'Acme Corp.', 'Siemens AG'",
            ([CAPS, {"LOWER": {"IN": list(LEGAL_SUFFIXES)}}],),
        ),
        Rule(
            "org_keyword", "ORG",
            "capitalised words + organisation head: 'Labour Party', 'Bank of England'",
            (
                [CAPS, {"LOWER": {"IN": list(ORG_HEADS)}, "TEXT": {"REGEX": "^[A-Z]"}}],
                [{"LOWER": {"IN": list(ORG_HEADS_OF)}, "TEXT": {"REGEX": "^[A-Z]"}}, {"LOWER": "of"}, CAPS],
            ),
        ),
        Rule(
            "title_per", "PER", "a person title, then capitalised words: 'Dr. Jane Roe' -> 'Jane Roe'",
            ([{"LOWER": {"IN": list(PERSON_TITLES)}}, CAPS],),
            _trim_title,
        ),
        Rule(
            "acronym_org", "ORG",
            "an all-capital token of 2-5 letters ('NATO', 'U.N.') outside all-capital headlines",
            ([{"TEXT": {"REGEX": r"^(?:[A-Z]{2,5}|(?:[A-Z]\.){2,4})$"}}],),
            _acronym,
        ),
        Rule(
            "event_misc", "MISC",
            "capitalised words + event head: 'World Cup', 'U.S. Open', 'Monaco Grand Prix'",
            (
                [CAPS, {"LOWER": {"IN": list(EVENT_HEADS)}, "TEXT": {"REGEX": "^[A-Z]"}}],
                [CAPS, {"LOWER": "grand"}, {"LOWER": "prix"}],
            ),
            _trim_event,
        ),
    )
}


def select_rules(names: Optional[List[str]]) -> List[Rule]:
    """The rules called `names` (all rules for None); unknown names raise ValueError."""
    if names is None:
        return list(RULES.values())
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; available: {', '.join(RULES)}")
    return [RULES[name] for name in names]
