import json
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List

import pytest
from spacy.tokens import Doc, DocBin
from spacy.vocab import Vocab
from typer.testing import CliRunner

from spacy_bond_moe import converters
from spacy_bond_moe.cli import app
from spacy_bond_moe.converters import (
    ConversionError,
    convert,
    convert_bond_dir,
    convert_roster_dir,
    read_bond_json,
    read_roster,
    repair_bio,
    to_doc,
)

SHARED = Path(__file__).parents[2] / "shared" / "datasets"
TAG_TO_ID = {
    "O": 0, "B-LOC": 1, "B-ORG": 2, "B-PER": 3, "B-MISC": 4,
    "I-PER": 5, "I-MISC": 6, "I-ORG": 7, "I-LOC": 8, "<START>": 9, "<STOP>": 10,
}
T = TAG_TO_ID


def load_docs(path: Path) -> List[Doc]:
    return list(DocBin().from_disk(path).get_docs(Vocab()))


def ents(doc: Doc) -> List[tuple]:
    return [(ent.text, ent.label_) for ent in doc.ents]


def write_bond(directory: Path, splits: Dict[str, object]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tag_to_id.json").write_text(json.dumps(TAG_TO_ID))
    for split, data in splits.items():
        text = data if isinstance(data, str) else json.dumps(data)
        (directory / f"{split}.json").write_text(text)
    return directory


def sent(words: List[str], tags: List[int]) -> dict:
    return {"str_words": words, "words": [0] * len(words), "tags": tags}


BOND_TRAIN = [
    sent(["John", "Smith", "visited", "Paris", "."], [T["B-PER"], T["I-PER"], 0, T["B-LOC"], 0]),
    sent([], []),
    sent(["the", "Red", "Cross"], [0, T["I-ORG"], T["I-ORG"]]),  # I-ORG after O: repaired
]


# --- BIO repair -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tags, expected, n",
    [
        (["O", "I-PER", "I-PER", "O"], ["O", "B-PER", "I-PER", "O"], 1),
        (["B-ORG", "I-PER"], ["B-ORG", "B-PER"], 1),
        (["I-LOC", "O", "I-LOC"], ["B-LOC", "O", "B-LOC"], 2),
        (["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"], 0),
        ([], [], 0),
    ],
    ids=["I-after-O", "I-X-after-B-Y", "I-at-start", "valid-unchanged", "empty"],
)
def test_repair_bio(tags: List[str], expected: List[str], n: int) -> None:
    assert repair_bio(tags) == (expected, n)


def test_to_doc_sets_every_token_and_id() -> None:
    doc = to_doc(Vocab(), ["New", "York", "is", "big"], ["B-LOC", "I-LOC", "O", "O"], "d:train:7")
    assert doc.text == "New York is big"
    assert [t.whitespace_ for t in doc] == [" ", " ", " ", ""]
    assert ents(doc) == [("New York", "LOC")]
    assert [t.ent_iob_ for t in doc] == ["B", "I", "O", "O"]
    assert doc.user_data["bond_moe_id"] == "d:train:7"


# --- round trips ------------------------------------------------------------------------


def test_bond_round_trip(tmp_path: Path) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN})
    out = tmp_path / "train.spacy"
    stats = convert("bond", (src / "train.json", src / "tag_to_id.json"), out, "toy", "train")
    assert (stats.n_docs, stats.n_tokens, stats.n_repaired, stats.n_skipped_empty) == (2, 8, 1, 1)
    assert stats.n_ents == {"LOC": 1, "ORG": 1, "PER": 1}
    docs = load_docs(out)
    assert [[t.text for t in d] for d in docs] == [BOND_TRAIN[0]["str_words"], BOND_TRAIN[2]["str_words"]]
    assert ents(docs[0]) == [("John Smith", "PER"), ("Paris", "LOC")]
    assert ents(docs[1]) == [("Red Cross", "ORG")]
    # ids keep the source index (sentence 1 was empty and skipped)
    assert [d.user_data["bond_moe_id"] for d in docs] == ["toy:train:0", "toy:train:2"]
    for doc in docs:
        assert all(t.ent_iob_ in {"B", "I", "O"} for t in doc)
        assert not any(label in {"<START>", "<STOP>"} for label in (t.ent_type_ for t in doc))
        assert "<START>" not in doc.text and "<STOP>" not in doc.text


def test_read_bond_json_yields_every_sentence(tmp_path: Path) -> None:
    src = write_bond(tmp_path, {"train": BOND_TRAIN})
    sentences = list(read_bond_json(src / "train.json", src / "tag_to_id.json"))
    assert sentences[1] == ([], [])
    assert sentences[2] == (["the", "Red", "Cross"], ["O", "I-ORG", "I-ORG"])


def test_roster_round_trip(tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    labels = tmp_path / "l.txt"
    text.write_text("EU rejects German call .\n\nPeter  Blackburn\nO'Neill  left\n")
    labels.write_text("B-ORG O B-MISC O O\n\nB-PER I-PER\nI-PER O\n")
    stats = convert("roster", (text, labels), tmp_path / "dev.spacy", "conll", "dev")
    assert (stats.n_docs, stats.n_tokens, stats.n_repaired, stats.n_skipped_empty) == (3, 9, 1, 1)
    assert stats.n_ents == {"MISC": 1, "ORG": 1, "PER": 2}
    docs = load_docs(tmp_path / "dev.spacy")
    assert [d.text for d in docs] == ["EU rejects German call .", "Peter Blackburn", "O'Neill left"]
    assert ents(docs[0]) == [("EU", "ORG"), ("German", "MISC")]
    assert ents(docs[2]) == [("O'Neill", "PER")]
    assert [d.user_data["bond_moe_id"] for d in docs] == ["conll:dev:0", "conll:dev:2", "conll:dev:3"]


# --- errors -----------------------------------------------------------------------------


def bond_error(tmp_path: Path, content: object) -> ConversionError:
    src = write_bond(tmp_path, {"train": content})
    with pytest.raises(ConversionError) as info:
        list(read_bond_json(src / "train.json", src / "tag_to_id.json"))
    assert "train.json" in str(info.value)
    return info.value


@pytest.mark.parametrize(
    "content, expected",
    [
        ('[{"str_words": ["a"], "tags": [0]},\n {oops}]', ["invalid JSON", "line 2", "column 3"]),
        ({"str_words": ["a"], "tags": [0]}, ["expected a list"]),
        ("", ["empty"]),
        ("[]", ["no sentences"]),
    ],
    ids=["bad-json", "not-a-list", "empty-file", "empty-list"],
)
def test_bond_file_errors(tmp_path: Path, content: object, expected: List[str]) -> None:
    message = str(bond_error(tmp_path, content))
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    "bad_sentence, expected",
    [
        ({"str_words": ["a", "b"]}, ["missing key 'tags'"]),
        ({"tags": [0]}, ["missing key 'str_words'"]),
        (sent(["a", "b"], [0]), ["2 words", "1 tags"]),
        (sent(["a", "b"], [0, 42]), ["unknown tag id 42", "token 1"]),
        (sent(["a"], [T["<START>"]]), ["<START>"]),
        (sent(["a"], [T["<STOP>"]]), ["<STOP>"]),
        (sent(["a", "b c"], [0, 0]), ["token 1", "'b c'"]),
    ],
    ids=["missing-tags", "missing-words", "length-mismatch", "unknown-id", "start-tag", "stop-tag", "space-in-token"],
)
def test_bond_sentence_errors(tmp_path: Path, bad_sentence: dict, expected: List[str]) -> None:
    message = str(bond_error(tmp_path, [sent(["ok"], [0]), sent(["ok"], [0]), bad_sentence]))
    assert "sentence 2" in message
    for part in expected:
        assert part in message


def test_bond_bad_tag_map(tmp_path: Path) -> None:
    src = write_bond(tmp_path, {"train": [sent(["a"], [0])]})
    (src / "tag_to_id.json").write_text('{"O": 0, "B-PER": 0}')
    with pytest.raises(ConversionError, match=r"tag_to_id\.json: .*share id 0"):
        list(read_bond_json(src / "train.json", src / "tag_to_id.json"))


def roster_error(tmp_path: Path, text: str, labels: str) -> str:
    text_path, label_path = tmp_path / "valid_text.txt", tmp_path / "valid_label_true.txt"
    text_path.write_text(text)
    label_path.write_text(labels)
    with pytest.raises(ConversionError) as info:
        list(read_roster(text_path, label_path))
    return str(info.value)


def test_roster_line_count_mismatch(tmp_path: Path) -> None:
    message = roster_error(tmp_path, "a\nb\nc\n", "O\nO\n")
    assert "valid_label_true.txt" in message
    assert "2 lines" in message and "3" in message


def test_roster_token_label_mismatch(tmp_path: Path) -> None:
    message = roster_error(tmp_path, "a b\nc d e\n", "O O\nO O\n")
    assert "valid_label_true.txt: line 2" in message
    assert "2 labels" in message and "3 tokens" in message


@pytest.mark.parametrize("label", ["PER", "B-", "X-PER", "b-PER"])
def test_roster_unknown_label(tmp_path: Path, label: str) -> None:
    message = roster_error(tmp_path, "a\nb\nc\n", f"O\nO\n{label}\n")
    assert "valid_label_true.txt: line 3" in message
    assert f"unknown label {label!r}" in message


def test_roster_empty_file(tmp_path: Path) -> None:
    message = roster_error(tmp_path, "", "")
    assert "valid_text.txt" in message and "empty" in message


# --- atomic write -----------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    convert("bond", (src / "train.json", src / "tag_to_id.json"), out_dir / "train.spacy", "toy", "train")
    assert [p.name for p in out_dir.iterdir()] == ["train.spacy"]
    assert len(load_docs(out_dir / "train.spacy")) == 2


def test_failed_conversion_keeps_old_output(tmp_path: Path) -> None:
    src = write_bond(tmp_path / "src", {"train": [sent(["a"], [99])]})
    out = tmp_path / "train.spacy"
    out.write_bytes(b"previous")
    with pytest.raises(ConversionError):
        convert("bond", (src / "train.json", src / "tag_to_id.json"), out, "toy", "train")
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["train.spacy"]


def test_failed_replace_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN})
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(converters.os, "replace", fail)
    with pytest.raises(ConversionError, match="disk full"):
        convert("bond", (src / "train.json", src / "tag_to_id.json"), out_dir / "train.spacy", "toy", "train")
    assert list(out_dir.iterdir()) == []


# --- directories ------------------------------------------------------------------------


def test_convert_bond_dir_skips_missing_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN, "dev": [sent(["Bonn"], [T["B-LOC"]])]})
    with caplog.at_level(logging.INFO, logger="spacy_bond_moe"):
        results = convert_bond_dir(src, tmp_path / "out", "toy")
    assert set(results) == {"train", "dev"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dev.spacy", "train.spacy"]
    assert any("test" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert any("1 BIO tags repaired" in r.message and "1 empty" in r.message for r in caplog.records)
    assert load_docs(tmp_path / "out" / "dev.spacy")[0].user_data["bond_moe_id"] == "toy:dev:0"


def write_roster_dir(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "train_text.txt": "Peter went to Rome\n",
        "train_label_dist.txt": "B-PER O O O\n",
        # gold train labels must never be read: an invalid label here would fail the conversion
        "train_label_true.txt": "B-PER O O NOT-A-LABEL\n",
        "valid_text.txt": "Rome\n",
        "valid_label_true.txt": "B-LOC\n",
        "test_text.txt": "Milan\n",
        "test_label_true.txt": "B-LOC\n",
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_convert_roster_dir_uses_distant_train_labels(tmp_path: Path) -> None:
    src = write_roster_dir(tmp_path / "src")
    results = convert_roster_dir(src, tmp_path / "out", "conll")
    assert {split: s.n_ents for split, s in results.items()} == {
        "train": {"PER": 1}, "dev": {"LOC": 1}, "test": {"LOC": 1},
    }
    assert ents(load_docs(tmp_path / "out" / "train.spacy")[0]) == [("Peter", "PER")]


# --- CLI --------------------------------------------------------------------------------


def test_cli_convert_summary(tmp_path: Path) -> None:
    src = write_bond(tmp_path / "webby", {"train": BOND_TRAIN})
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("webby (bond)")
    assert lines[1].split() == ["split", "docs", "tokens", "ents", "LOC", "ORG", "PER", "repaired", "skipped"]
    assert lines[2].split() == ["train", "2", "8", "3", "1", "1", "1", "1", "1"]
    assert "dev: not found, skipped" in result.stdout
    assert load_docs(tmp_path / "out" / "train.spacy")[0].user_data["bond_moe_id"] == "webby:train:0"


def test_cli_roster_with_explicit_format_and_dataset(tmp_path: Path) -> None:
    src = write_roster_dir(tmp_path / "src")
    result = CliRunner().invoke(
        app, ["convert", str(src), str(tmp_path / "out"), "--format", "roster", "--dataset", "c"]
    )
    assert result.exit_code == 0, result.output
    assert load_docs(tmp_path / "out" / "test.spacy")[0].user_data["bond_moe_id"] == "c:test:0"


@pytest.mark.parametrize(
    "make_src, expected",
    [
        (lambda d: write_bond(d, {"train": '[{"str_words": ["a"], "tags": [0]'}), "train.json"),
        (lambda d: d, "cannot detect the format"),
    ],
    ids=["bad-json", "unknown-format"],
)
def test_cli_error_exits_1_without_traceback(
    tmp_path: Path, make_src: Callable[[Path], Path], expected: str
) -> None:
    src = make_src(tmp_path / "src")
    src.mkdir(exist_ok=True)
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert expected in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- real data --------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "bond" / "webpage_distant").is_dir(), reason="shared data not present")
def test_webpage_real_data(tmp_path: Path) -> None:
    results = convert_bond_dir(SHARED / "bond" / "webpage_distant", tmp_path, "webpage")
    assert {split: s.n_docs for split, s in results.items()} == {"train": 385, "dev": 99, "test": 135}
    assert results["train"].n_tokens == 5293
    assert results["train"].n_ents_total > 0
    dev_docs = load_docs(tmp_path / "dev.spacy")
    assert len(dev_docs) == 99
    assert sum(len(d.ents) for d in dev_docs) == results["dev"].n_ents_total > 0


# --- all-or-nothing output, stale splits, empty splits, bad output folders ----------------


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_cli_failed_split_leaves_old_output_untouched(tmp_path: Path) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN, "dev": [sent(["Bonn"], [T["B-LOC"]])]})
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["convert", str(src), str(out)]).exit_code == 0
    before = snapshot(out)
    (src / "train.json").write_text(json.dumps(BOND_TRAIN[:1]))  # train converts, then dev fails
    (src / "dev.json").write_text('[{"str_words": ["a"], "tags": [0]}, {oops}]')
    result = CliRunner().invoke(app, ["convert", str(src), str(out)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {src / 'dev.json'}: invalid JSON at line 1 column 38: Expecting property name "
        "enclosed in double quotes"
    ]
    assert "Traceback" not in result.output
    assert snapshot(out) == before  # the new train.spacy was not moved in alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary folder left


def test_cli_failed_split_leaves_no_new_output(tmp_path: Path) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN, "dev": '[{"str_words": ["a"]}]'})
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "new" / "out")])
    assert result.exit_code == 1 and "dev.json: sentence 0: missing key 'tags'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # not even the parent folder


def test_cli_removes_stale_test_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN, "test": [sent(["Bonn"], [T["B-LOC"]])]})
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["convert", str(src), str(out)]).exit_code == 0
    (out / "notes.txt").write_text("kept")
    (src / "test.json").unlink()
    result = CliRunner().invoke(app, ["convert", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert f"test: not found, skipped; removed the stale {out / 'test.spacy'}" in result.stdout
    assert "dev: not found, skipped\n" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train.spacy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    with caplog.at_level(logging.WARNING, logger="spacy_bond_moe"):
        (out / "test.spacy").write_bytes(b"old")
        results = convert_bond_dir(src, out, "toy")
    assert results.removed == [out / "test.spacy"] and not (out / "test.spacy").exists()
    assert any("removed the stale" in r.message for r in caplog.records)


@pytest.mark.parametrize("split", ["train", "dev"])
def test_cli_split_of_only_empty_sentences_is_an_error(tmp_path: Path, split: str) -> None:
    splits = {"train": BOND_TRAIN, "dev": BOND_TRAIN, split: [sent([], []), sent([], [])]}
    src = write_bond(tmp_path / "src", splits)
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {src / f'{split}.json'}: no documents: all 2 sentences are empty"
    assert not (tmp_path / "out").exists()


def test_roster_split_of_only_empty_lines_is_an_error(tmp_path: Path) -> None:
    text, labels = tmp_path / "t.txt", tmp_path / "l.txt"
    text.write_text("\n \n")
    labels.write_text("\n\n")
    with pytest.raises(ConversionError, match=r"t\.txt: file is empty"):
        convert("roster", (text, labels), tmp_path / "train.spacy", "c", "train")
    assert not (tmp_path / "train.spacy").exists()


@pytest.mark.parametrize("out_rel", ["file.txt/out", "file.txt"], ids=["parent-is-a-file", "out-is-a-file"])
def test_cli_output_folder_cannot_be_created(tmp_path: Path, out_rel: str) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN})
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / out_rel
    result = CliRunner().invoke(app, ["convert", str(src), str(out)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {tmp_path / 'file.txt'}") and "cannot create the output folder" in line
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "src"]
    assert (tmp_path / "file.txt").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_cli_output_folder_permission_denied(tmp_path: Path) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN})
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = CliRunner().invoke(app, ["convert", str(src), str(locked / "out")])
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 1 and "Permission denied" in result.stderr
    assert "Traceback" not in result.output and not any(locked.iterdir())


def test_cli_output_folder_permission_denied_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN})
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = CliRunner().invoke(app, ["convert", str(src), str(tmp_path / "locked" / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {tmp_path / 'locked'}: cannot create the output folder "
        f"([Errno 13] Permission denied: '{tmp_path / 'locked'}')"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_failed_move_into_place_restores_old_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_bond(tmp_path / "src", {"train": BOND_TRAIN, "dev": BOND_TRAIN})
    out = tmp_path / "out"
    convert_bond_dir(src, out, "toy")
    (out / "test.spacy").write_bytes(b"stale")
    before = snapshot(out)
    real_replace = os.replace

    def replace(source: object, target: object) -> None:
        if Path(source).parent.name != "previous" and Path(target) == out / "dev.spacy":
            raise OSError("disk full")  # the second new file cannot be moved in
        real_replace(source, target)

    monkeypatch.setattr(converters.os, "replace", replace)
    with pytest.raises(ConversionError) as info:
        convert_bond_dir(src, out, "toy")
    assert str(info.value) == f"{out}: cannot move the converted files into place (disk full)"
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
