"""`fetch` (mirror copy / download, MD5 checks), project.yml, and the `evaluate`/`smoke` commands.

Fast and offline: the network is never used (the download function is monkeypatched).
"""
import hashlib
import json
import re
import shutil
import urllib.error
from pathlib import Path
from typing import Dict, List

import pytest
import spacy
from spacy.tokens import DocBin
from typer.testing import CliRunner
from weasel.util import split_command

from spacy_bond_moe import fetch
from spacy_bond_moe.cli import app
from spacy_bond_moe.converters import ROSTER_FILES
from spacy_bond_moe.fetch import DATA_FILES, MIRROR_ENV, DataFile

from .conftest import make_doc, make_examples

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(__file__).resolve().parents[2] / "shared/datasets"
needs_mirror = pytest.mark.skipif(not MIRROR.is_dir(), reason="no ../shared/datasets mirror")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def run(*args: str):
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test may reach the network; tests that want downloads patch `fetch.download` again."""

    def offline(url: str, timeout: float = 0.0) -> bytes:
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(fetch, "download", offline)
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def synthetic(monkeypatch, tmp_path) -> Dict[str, bytes]:
    """A two-dataset table of small synthetic files, and a mirror holding all but the optional one."""
    contents = {
        "bond/toy_distant/train.json": b'[{"str_words": ["Paris"], "tags": [1]}]\n',
        "bond/toy_distant/tag_to_id.json": b'{"O": 0, "B-LOC": 1}\n',
        "bond/toy_distant/test.json": b"[]\n",
        "roster/other/train_text.txt": b"Paris is big\n",
    }
    table = [
        DataFile("bond/toy_distant/train.json", md5(contents["bond/toy_distant/train.json"]),
                 "https://example.invalid/train.json", "toy", "train"),
        DataFile("bond/toy_distant/tag_to_id.json", md5(contents["bond/toy_distant/tag_to_id.json"]),
                 "https://example.invalid/tag_to_id.json", "toy", "meta"),
        DataFile("bond/toy_distant/test.json", md5(contents["bond/toy_distant/test.json"]),
                 "https://example.invalid/test.json", "toy", "test", required=False),
        DataFile("roster/other/train_text.txt", md5(contents["roster/other/train_text.txt"]),
                 "https://example.invalid/train_text.txt", "other", "train"),
    ]
    monkeypatch.setattr(fetch, "DATA_FILES", table)
    monkeypatch.setattr(fetch, "DATASETS", ("toy", "other"))
    mirror = tmp_path / "mirror"
    for rel, data in contents.items():
        if rel != "bond/toy_distant/test.json":
            (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
            (mirror / rel).write_bytes(data)
    return contents


def tmp_files(folder: Path) -> List[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------- table


def test_table_is_consistent():
    paths = [f.path for f in DATA_FILES]
    assert len(paths) == len(set(paths))
    assert set(fetch.DATASETS) == {"conll03", "twitter", "webpage", "wikigold"}
    for f in DATA_FILES:
        assert re.fullmatch(r"[0-9a-f]{32}", f.md5)
        assert f.url.startswith("https://raw.githubusercontent.com/")
        commit = fetch.BOND_COMMIT if f.path.startswith("bond/") else fetch.ROSTER_COMMIT
        assert f"/{commit}/" in f.url and f.url.endswith(f.path.split("/", 1)[1])
    optional = [f.path for f in DATA_FILES if not f.required]
    assert optional == ["bond/wikigold_distant/test.json"]
    evaluation_only = [f.path for f in DATA_FILES if f.evaluation_only]
    assert evaluation_only == ["roster/conll/train_label_true.txt"]
    # training reads the distant labels only
    assert "train_label_true.txt" not in ROSTER_FILES["train"]


@needs_mirror
def test_table_matches_the_mirror_readme():
    block = (MIRROR / "README.md").read_text(encoding="utf8").split("## MD5 checksums")[1]
    listed = dict((path, checksum) for checksum, path in re.findall(r"([0-9a-f]{32})\s+(\S+)", block))
    assert listed == {f.path: f.md5 for f in DATA_FILES}


# ---------------------------------------------------------------------- mirror


@needs_mirror
def test_real_mirror_copy_verifies_md5(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(MIRROR))
    dest = tmp_path / "assets"
    result = run("fetch", dest)
    # everything but wikigold's test split is mirrored: a warning, not a failure
    assert result.exit_code == 0, result.output
    assert "missing optional file bond/wikigold_distant/test.json" in result.output
    assert "Traceback" not in result.output
    for f in DATA_FILES:
        target = dest / f.path
        if f.required:
            assert hashlib.md5(target.read_bytes()).hexdigest() == f.md5, f.path
        else:
            assert not target.exists()
    assert not tmp_files(dest)
    # second run: every file already present with the right MD5 is skipped
    again = run("fetch", dest, "--dataset", "webpage")
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped bond/webpage_distant/") == 4
    assert "copied" not in again.output


@needs_mirror
def test_real_mirror_flipped_byte(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    shutil.copytree(MIRROR / "bond/webpage_distant", mirror / "bond/webpage_distant")
    bad = mirror / "bond/webpage_distant/dev.json"
    data = bytearray(bad.read_bytes())
    data[10] ^= 0x01
    bad.write_bytes(bytes(data))
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    result = run("fetch", tmp_path / "assets", "--dataset", "webpage")
    assert result.exit_code == 1
    expected = next(f.md5 for f in DATA_FILES if f.path == "bond/webpage_distant/dev.json")
    assert "bond/webpage_distant/dev.json" in result.output
    assert expected in result.output and md5(bytes(data)) in result.output
    assert not (tmp_path / "assets/bond/webpage_distant/dev.json").exists()
    assert (tmp_path / "assets/bond/webpage_distant/train.json").exists()  # the good ones are kept


def test_synthetic_mirror_copy(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    dest = tmp_path / "assets"
    result = run("fetch", dest, "--dataset", "toy")
    assert result.exit_code == 0, result.output
    assert (dest / "bond/toy_distant/train.json").read_bytes() == synthetic["bond/toy_distant/train.json"]
    assert not (dest / "roster").exists()  # other dataset not selected
    # the optional file absent from the mirror is reported, no crash
    assert "missing optional file bond/toy_distant/test.json" in result.output
    assert "Traceback" not in result.output
    assert not tmp_files(dest)


def test_synthetic_flipped_byte_reports_both_checksums(synthetic, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    corrupted = b"X" + synthetic["bond/toy_distant/tag_to_id.json"][1:]
    (mirror / "bond/toy_distant/tag_to_id.json").write_bytes(corrupted)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    dest = tmp_path / "assets"
    result = run("fetch", dest)
    assert result.exit_code == 1
    assert "bond/toy_distant/tag_to_id.json" in result.output
    assert md5(synthetic["bond/toy_distant/tag_to_id.json"]) in result.output  # expected
    assert md5(corrupted) in result.output  # actual
    assert not (dest / "bond/toy_distant/tag_to_id.json").exists()
    assert not tmp_files(dest)


def test_missing_required_file_fails(synthetic, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "roster/other/train_text.txt").unlink()
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    result = run("fetch", tmp_path / "assets")
    assert result.exit_code == 1
    assert "missing required file roster/other/train_text.txt" in result.output


def test_mirror_not_a_folder(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    result = run("fetch", tmp_path / "assets")
    assert result.exit_code == 1
    assert MIRROR_ENV in result.output and "not a folder" in result.output


def test_unknown_dataset(synthetic, tmp_path):
    result = run("fetch", tmp_path / "assets", "--dataset", "ontonotes")
    assert result.exit_code == 1
    assert "ontonotes" in result.output and "toy" in result.output


def test_existing_files_skipped_or_replaced(synthetic, tmp_path, monkeypatch):
    dest = tmp_path / "assets"
    good = dest / "bond/toy_distant/train.json"
    good.parent.mkdir(parents=True)
    good.write_bytes(synthetic["bond/toy_distant/train.json"])
    stale = dest / "bond/toy_distant/tag_to_id.json"
    stale.write_bytes(b"stale")
    inode = good.stat().st_ino
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    result = run("fetch", dest, "--dataset", "toy")
    assert result.exit_code == 0, result.output
    assert "skipped bond/toy_distant/train.json" in result.output
    assert good.stat().st_ino == inode  # untouched
    assert md5(b"stale") in result.output  # the wrong existing file is named and fetched again
    assert stale.read_bytes() == synthetic["bond/toy_distant/tag_to_id.json"]


def test_corrupt_destination_and_corrupt_mirror_leave_no_corrupt_file(synthetic, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    bad_mirror = b"X" + synthetic["bond/toy_distant/tag_to_id.json"][1:]
    (mirror / "bond/toy_distant/tag_to_id.json").write_bytes(bad_mirror)
    dest = tmp_path / "assets"
    target = dest / "bond/toy_distant/tag_to_id.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt")
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    result = run("fetch", dest, "--dataset", "toy")
    assert result.exit_code == 1
    aside = target.with_name("tag_to_id.json.corrupt")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: MD5 mismatch for bond/toy_distant/tag_to_id.json: expected "
        f"{md5(synthetic['bond/toy_distant/tag_to_id.json'])}, got {md5(bad_mirror)} "
        f"(from {mirror / 'bond/toy_distant/tag_to_id.json'}); the file was not written; "
        f"the corrupt copy at the destination was moved to {aside}"
    ]
    assert f"{target} has MD5 {md5(b'corrupt')}" in result.stdout
    assert not target.exists() and aside.read_bytes() == b"corrupt"
    assert "Traceback" not in result.output and not tmp_files(dest)
    # a good mirror copy later: fetched, verified, and the aside copy deleted
    (mirror / "bond/toy_distant/tag_to_id.json").write_bytes(synthetic["bond/toy_distant/tag_to_id.json"])
    target.write_bytes(b"corrupt again")
    again = run("fetch", dest, "--dataset", "toy")
    assert again.exit_code == 0, again.output
    assert target.read_bytes() == synthetic["bond/toy_distant/tag_to_id.json"] and not aside.exists()


def test_corrupt_destination_and_no_network_is_moved_aside(synthetic, tmp_path):
    target = tmp_path / "assets/bond/toy_distant/train.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt")
    result = run("fetch", tmp_path / "assets", "--dataset", "toy")
    assert result.exit_code == 1 and MIRROR_ENV in result.stderr
    assert f"moved it to {target}.corrupt" in result.stdout
    assert not target.exists() and Path(f"{target}.corrupt").read_bytes() == b"corrupt"


def test_corrupt_destination_that_cannot_be_moved_aside(synthetic, tmp_path, monkeypatch):
    target = tmp_path / "assets/bond/toy_distant/train.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"corrupt")

    def replace(source: object, dest: object) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(fetch.os, "replace", replace)
    results = fetch.fetch_files(fetch.select_files(["toy"])[:1], tmp_path / "assets", tmp_path / "mirror")
    assert [r.status for r in results] == [fetch.FAILED]
    assert results[0].message() == (
        f"cannot fetch bond/toy_distant/train.json: {target} has MD5 {md5(b'corrupt')}, expected "
        f"{md5(synthetic['bond/toy_distant/train.json'])} and cannot be moved aside (read-only file system): "
        "it is still there"
    )


# ---------------------------------------------------------------------- network


def test_no_network_no_mirror_names_the_variable(synthetic, tmp_path, monkeypatch):
    calls = []

    def offline(url: str, timeout: float = 0.0) -> bytes:
        calls.append(url)
        raise urllib.error.URLError(OSError("Name or service not known"))

    monkeypatch.setattr(fetch, "download", offline)
    result = run("fetch", tmp_path / "assets")
    assert result.exit_code == 1
    assert MIRROR_ENV in result.output
    assert "Traceback" not in result.output
    assert len(calls) == 1  # one clear message, not one timeout per file


def test_no_network_plain_oserror(synthetic, tmp_path, monkeypatch):
    def offline(url: str, timeout: float = 0.0) -> bytes:
        raise OSError("network unreachable")

    monkeypatch.setattr(fetch, "download", offline)
    result = run("fetch", tmp_path / "assets")
    assert result.exit_code == 1 and MIRROR_ENV in result.output


def test_download_verifies_md5_and_404_is_missing(synthetic, tmp_path, monkeypatch):
    by_url = {f.url: synthetic[f.path] for f in fetch.DATA_FILES}

    def fake_download(url: str, timeout: float = 0.0) -> bytes:
        if url.endswith("test.json"):
            raise urllib.error.HTTPError(url, 404, "Not Found", None, None)
        if url.endswith("train_text.txt"):
            return b"tampered\n"
        return by_url[url]

    monkeypatch.setattr(fetch, "download", fake_download)
    dest = tmp_path / "assets"
    result = run("fetch", dest)
    assert result.exit_code == 1  # the tampered required file
    assert "missing optional file bond/toy_distant/test.json" in result.output
    assert md5(b"tampered\n") in result.output and "roster/other/train_text.txt" in result.output
    assert (dest / "bond/toy_distant/train.json").read_bytes() == synthetic["bond/toy_distant/train.json"]
    assert not (dest / "roster/other/train_text.txt").exists()


# ---------------------------------------------------------------------- project.yml


def load_project(tmp_path: Path, overrides=None) -> dict:
    from weasel.util import load_project_config

    shutil.copy(REPO / "project.yml", tmp_path / "project.yml")  # directories are created beside it
    return load_project_config(tmp_path, overrides=overrides or {})


def test_project_yml_assets_match_the_table(tmp_path):
    project = load_project(tmp_path)
    assets = {a["dest"]: a for a in project["assets"]}
    assert len(assets) == len(project["assets"]) == len(DATA_FILES)
    for entry in fetch.weasel_assets():
        asset = assets[entry["dest"]]
        assert asset["checksum"] == entry["checksum"]
        assert asset["url"] == entry["url"]


def test_project_yml_commands_and_workflows(tmp_path):
    project = load_project(tmp_path)
    commands = {c["name"]: c for c in project["commands"]}
    workflows = project["workflows"]
    assert workflows["all"] == ["fetch", "convert", "train", "evaluate", "package", "install", "smoke"]
    assert workflows["benchmark"] == ["fetch-all"] + [f"convert-{d}" for d in fetch.DATASETS]
    for steps in workflows.values():
        assert all(step in commands for step in steps)
    for command in commands.values():
        for line in command["script"]:  # weasel runs scripts without a shell
            assert "&&" not in line and "|" not in line and not re.match(r"\w+=", line)
    v = project["vars"]
    assert (v["dataset"], v["config"], v["n_experts"], v["seed"], v["gpu_id"]) == ("conll03", "minilm", 3, 0, -1)
    assert v["data_dir"] == "assets/roster/conll"  # news text: CoNLL03 with BOND's distant labels
    schedule = (v["max_steps"], v["teacher_start"], v["teacher_refresh"], v["estep_every"], v["eval_frequency"])
    assert schedule == (1500, 900, 450, 878, 300)  # BOND's CoNLL03 schedule, capped at 1500 steps
    max_steps, start, refresh = schedule[:3]
    assert start + refresh <= max_steps  # the teacher is refreshed at least once
    train = commands["train"]["script"][0]
    for flag in ("--training.max_steps 1500", "--training.before_update.teacher_start 900",
                 "--components.bond_moe_ner.model.n_experts 3", "--system.seed 0", "--gpu-id -1"):
        assert flag in train
    args = split_command(train)
    labeller = json.loads(args[args.index("--components.bond_moe_ner.pseudo_labeller") + 1])
    assert labeller == {"@misc": "spacy-bond-moe.soft_pseudo_labels.v1", "power": 2.0, "threshold": 0.9}
    assert args[args.index("--training.logger.events_path") + 1] == \
        "training/conll03-minilm/bond_moe_events.jsonl"
    hard = load_project(tmp_path, {"vars.pseudo_labeller": r'{\"@misc\":\"spacy-bond-moe.hard_pseudo_labels.v1\"}'})
    hard_args = split_command({c["name"]: c for c in hard["commands"]}["train"]["script"][0])
    assert json.loads(hard_args[hard_args.index("--components.bond_moe_ner.pseudo_labeller") + 1]) == \
        {"@misc": "spacy-bond-moe.hard_pseudo_labels.v1"}
    for dataset, source in fetch.CONVERT_SOURCES.items():
        assert f"convert assets/{source} corpus/{dataset} " in commands[f"convert-{dataset}"]["script"][0]
    assert commands["convert"]["deps"] == ["assets/roster/conll"]
    # another dataset: dataset and data_dir set together (project.yml's header)
    wikigold = load_project(tmp_path, {"vars.dataset": "wikigold",
                                       "vars.data_dir": "assets/bond/wikigold_distant"})
    convert = {c["name"]: c for c in wikigold["commands"]}["convert"]["script"][0]
    assert convert.startswith("python -m spacy_bond_moe convert assets/bond/wikigold_distant corpus/wikigold")


# ---------------------------------------------------------------------- evaluate / smoke


@pytest.fixture
def ruler_model(tmp_path) -> Path:
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "LOC", "pattern": "London"}])
    nlp.to_disk(tmp_path / "ruler")
    return tmp_path / "ruler"


def write_split(nlp, path: Path, data) -> None:
    docs = [make_doc(nlp, text, ents, f"t:{i}") for i, (text, ents) in enumerate(data)]
    path.parent.mkdir(parents=True, exist_ok=True)
    DocBin(docs=docs, store_user_data=True).to_disk(path)


def test_evaluate_uses_test_then_dev(ruler_model, tmp_path):
    nlp = spacy.blank("en")
    corpus = tmp_path / "corpus"
    # dev: the ruler finds every entity; test: half of them (Paris is missed)
    write_split(nlp, corpus / "dev.spacy", [("I like London .", [(7, 13, "LOC")])])
    write_split(nlp, corpus / "test.spacy", [("London and Paris .", [(0, 6, "LOC"), (11, 16, "LOC")])])

    out = tmp_path / "metrics" / "test.json"
    result = run("evaluate", ruler_model, corpus, out)
    assert result.exit_code == 0, result.output
    assert "test split" in result.output
    scores = json.loads(out.read_text())
    assert scores["split"] == "test" and scores["data_path"].endswith("test.spacy")
    assert scores["ents_p"] == 1.0 and scores["ents_r"] == 0.5

    (corpus / "test.spacy").unlink()
    out = tmp_path / "metrics" / "dev.json"
    result = run("evaluate", ruler_model, corpus, out)
    assert result.exit_code == 0, result.output
    assert "dev split" in result.output and "no test split" in result.output
    scores = json.loads(out.read_text())
    assert scores["split"] == "dev" and scores["ents_r"] == 1.0
    assert not tmp_files(tmp_path / "metrics")

    (corpus / "dev.spacy").unlink()
    result = run("evaluate", ruler_model, corpus, tmp_path / "metrics" / "none.json")
    assert result.exit_code == 1 and "neither" in result.output


def test_smoke_without_bond_moe(ruler_model):
    result = run("smoke", ruler_model, "I like London .")
    assert result.exit_code == 0, result.output
    assert "'London'" in result.output and "confidence n/a" in result.output


def test_smoke_bond_moe(tmp_path):
    nlp = spacy.blank("en")
    cnn = {"@architectures": "spacy.HashEmbedCNN.v2", "pretrained_vectors": None, "width": 16,
           "depth": 1, "embed_size": 100, "window_size": 1, "maxout_pieces": 2, "subword_features": True}
    model = {"@architectures": "spacy-bond-moe.MoETagger.v1", "n_experts": 2, "tok2vec": cnn}
    nlp.add_pipe("bond_moe_ner", config={"model": model})
    examples = make_examples(nlp)
    nlp.initialize(lambda: examples)  # untrained: any output, but the attributes must be set
    nlp.to_disk(tmp_path / "moe")
    result = run("smoke", tmp_path / "moe", "Mary met John in Rome .", "")
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output
    lines = result.output.splitlines()
    assert re.search(r"^  expert: [01]$", result.output, re.M)
    assert "  expert: None" in lines  # the empty text
    assert all(re.search(r"confidence \d\.\d{3}$", line) for line in lines if "confidence" in line)
