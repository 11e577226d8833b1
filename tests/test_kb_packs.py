"""Knowledge-base packs: known entries, filters, conflicts, EntityRuler compatibility, determinism."""
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import spacy
from spacy.lang.en.stop_words import STOP_WORDS
from spacy.schemas import validate_token_pattern

from spacy_bond_moe.kb_packs import PACKS, Conflict, _is_latin, build_kb

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """All packs built once with the default settings: (stats, path, parsed lines)."""
    path = tmp_path_factory.mktemp("kb") / "all.jsonl"
    stats = build_kb(list(PACKS), path)
    lines = [json.loads(line) for line in path.read_text(encoding="utf8").splitlines()]
    return stats, path, lines


@pytest.fixture(scope="module")
def phrases(built) -> Dict[str, str]:
    """Phrase pattern -> label."""
    return {entry["pattern"]: entry["label"] for entry in built[2] if isinstance(entry["pattern"], str)}


@pytest.fixture(scope="module")
def token_patterns(built) -> List[list]:
    return [entry["pattern"] for entry in built[2] if not isinstance(entry["pattern"], str)]


def test_pack_table_pins_match_requirements():
    requirements = (REPO / "requirements.txt").read_text().splitlines()
    assert set(PACKS) == {"places", "demonyms", "companies", "persons"}
    for info in PACKS.values():
        assert info.labels and info.description and info.licences
        for source in info.sources:
            assert source.requirement in requirements
            assert importlib.metadata.version(source.package) == source.version


def test_places(phrases):
    for name in ["Paris", "Germany", "Europe", "California", "Canberra", "Bayern", "Bilisht"]:
        assert phrases.get(name) == "LOC", name
    assert phrases.get("München") == "LOC"  # Latin-1 alternate name of a city over 1M
    # ("Bilisht" is the parenthesised variant in the Albanian province "Devoll (Bilisht)")
    assert phrases.get("Korea") == "LOC"  # pycountry "Korea, Republic of", uninverted
    assert phrases.get("Falkland Islands") == "LOC"  # "(Malvinas)" dropped
    assert phrases.get("Biel") == "LOC" and phrases.get("Bienne") == "LOC"  # "Biel/Bienne"
    for bad in ["Central", "Northern", "AF", "AFG", "PAR", "Thai", "the Abode of Peace"]:
        assert phrases.get(bad) != "LOC", bad


def test_demonyms(phrases):
    for name in ["German", "French", "American", "English", "Swahili", "Antiguan", "Barbudan", "Montenegrin"]:
        assert phrases.get(name) == "MISC", name
    assert not any("(" in pattern or ")" in pattern for pattern in phrases)


def test_companies(phrases):
    for name in ["Deutsche Bank", "Apple Inc.", "Apple", "Siemens", "BT Group", "Merck", "Estée Lauder"]:
        assert phrases.get(name) == "ORG", name
    assert "BT" not in phrases  # short form under 3 characters
    assert "Puma" in phrases and "Puma (brand)" not in phrases


def test_persons(token_patterns):
    assert len(token_patterns) == 2
    full_name, initial_surname = token_patterns
    first_names = set(full_name[0]["TEXT"]["IN"])
    surnames = set(initial_surname[1]["TEXT"]["IN"])
    assert {"John", "Mary", "Bill"} <= first_names
    assert not first_names & {"May", "Will"}  # stop words
    assert {"Smith", "McDonald", "Johnson"} <= surnames
    assert all(len(name) >= 3 and name.lower() not in STOP_WORDS for name in surnames)
    assert all(not validate_token_pattern(pattern) for pattern in token_patterns)


def test_filters_and_dedupe(built, phrases):
    stats, _, lines = built
    for pattern in phrases:
        assert pattern == pattern.strip() and len(pattern) >= 2
        assert any(char.isupper() for char in pattern), pattern
        assert not all(word.lower() in STOP_WORDS for word in pattern.split()), pattern
        assert _is_latin(pattern), pattern
    phrase_lines = [entry for entry in lines if isinstance(entry["pattern"], str)]
    assert len(phrase_lines) == len(phrases)  # every string once, under one label
    assert {entry["source"] for entry in lines} == {s.package for p in PACKS.values() for s in p.sources}
    assert stats.total == len(lines)
    assert stats.entries["persons"] == {"PER": 2}
    assert stats.skipped["places"]["non_latin"] > 0 and stats.skipped["places"]["code"] > 0
    assert stats.skipped["persons"]["stop_words"] > 0


def test_conflicts(built, phrases):
    stats = built[0]
    assert phrases["Nokia"] == "ORG"  # a listed company name beats the Finnish town
    assert phrases["Phoenix"] == "LOC"  # the short form of "Phoenix Group" loses to the city
    assert phrases["Gibraltar"] == "LOC"  # countryinfo also lists it as a demonym
    assert Conflict("Phoenix", "LOC", "ORG") in stats.conflicts
    assert stats.conflicts == sorted(stats.conflicts)
    n_conflicts = sum(skipped.get("conflict", 0) for skipped in stats.skipped.values())
    assert n_conflicts == len(stats.conflicts) > 0


def test_entity_ruler_loads_and_tags(built):
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": e["label"], "pattern": e["pattern"]} for e in built[2]])
    doc = nlp("John Smith visited Paris .")
    assert [(ent.text, ent.label_) for ent in doc.ents] == [("John Smith", "PER"), ("Paris", "LOC")]
    doc = nlp("J. Smith and Mary O'Brien met Deutsche Bank staff in Germany .")
    assert [(ent.text, ent.label_) for ent in doc.ents] == [
        ("J. Smith", "PER"),
        ("Mary O'Brien", "PER"),
        ("Deutsche Bank", "ORG"),
        ("Germany", "LOC"),
    ]


def test_deterministic_atomic_output(built, tmp_path):
    _, path, _ = built
    again = tmp_path / "again.jsonl"
    build_kb(list(reversed(PACKS)), again)
    assert again.read_bytes() == path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again.jsonl"]  # no temporary file left


def test_min_population(tmp_path):
    stats = build_kb(["places"], tmp_path / "big.jsonl", min_population=1_000_000)
    patterns = {json.loads(line)["pattern"] for line in (tmp_path / "big.jsonl").read_text().splitlines()}
    assert "Paris" in patterns and "Vineland" not in patterns  # Vineland, NJ: ~60,000 people
    assert stats.entries["places"]["LOC"] < 43000
    with pytest.raises(ValueError, match="at least 500"):
        build_kb(["places"], tmp_path / "x.jsonl", min_population=100)


def test_unknown_or_no_pack(tmp_path):
    with pytest.raises(ValueError, match="unknown pack.*nope.*places, demonyms, companies, persons"):
        build_kb(["places", "nope"], tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="no pack given"):
        build_kb([], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def test_missing_package_names_pip_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "names", None)  # makes `import names` fail
    with pytest.raises(ImportError, match=r"pip install names==0\.3\.0"):
        build_kb(["persons"], tmp_path / "x.jsonl")
