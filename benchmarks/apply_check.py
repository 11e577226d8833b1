"""`spacy apply` on real multi-line input: whole CoNLL03 test articles (line breaks, paragraph
breaks, a tab-indented line, trailing spaces) as a text file and as JSONL.

    python benchmarks/apply_check.py MODEL [--text assets/roster/conll/test_text.txt]

Writes the inputs and spaCy's outputs under runs/apply_check/ and a summary JSON to
benchmarks/results/apply_check__<run dir>__<model dir>.json: exit codes, documents, entities, blank
tokens (none may be inside an entity), and whether each article's entities equal those of the
same article with every whitespace run collapsed to one space.
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy
import spacy
from spacy.tokens import DocBin

from spacy_bond_moe.tags import blank_mask

ROOT = Path(__file__).resolve().parents[1]
DATELINE = re.compile(r"\d{4}-\d{2}-\d{2}$")


def articles(lines: List[str]) -> List[str]:
    """CoNLL03 sentences regrouped into articles: headline, dateline, paragraphs of three
    sentences. An article starts at the line above each dateline ("CITY 1996-12-06")."""
    starts = [i - 1 for i, line in enumerate(lines) if DATELINE.search(line) and i > 0]
    texts = []
    for begin, end in zip(starts, starts[1:] + [len(lines)]):
        head, body = lines[begin : begin + 2], lines[begin + 2 : end]
        paragraphs = [" ".join(body[i : i + 3]) for i in range(0, len(body), 3)]
        texts.append("\n".join(head) + "\n\n" + "\n\n".join(paragraphs) + "\n")
    return texts


def summarise(nlp, path: Path) -> Dict[str, int]:
    docs = list(DocBin().from_disk(path).get_docs(nlp.vocab))
    n_blank = n_blank_in_ents = 0
    for doc in docs:
        blank = blank_mask(doc)
        n_blank += int(blank.sum())
        n_blank_in_ents += sum(int(blank[e.start : e.end].any()) for e in doc.ents)
    return {"docs": len(docs), "tokens": sum(len(d) for d in docs),
            "entities": sum(len(d.ents) for d in docs), "blank_tokens": n_blank,
            "entities_with_blank_tokens": n_blank_in_ents}


def compare_collapsed(nlp, texts: List[str]) -> Dict[str, object]:
    """Each article against the same text with every whitespace run collapsed to one space:
    the visible tokens' probabilities, and the entities. A line break splits an entity that the
    collapsed text runs across it ("Robert Kitson" / "LONDON"); any other difference counts."""
    ner = nlp.get_pipe("bond_moe_ner")
    docs = [nlp.make_doc(t) for t in texts]
    flats = [nlp.make_doc(" ".join(t.split())) for t in texts]
    max_diff, same, split_only = 0.0, 0, 0
    for doc, flat, p_doc, p_flat in zip(docs, flats, ner.predict(docs), ner.predict(flats)):
        visible = numpy.flatnonzero(~blank_mask(doc))
        assert [doc[i].text for i in visible] == [t.text for t in flat]
        max_diff = max(max_diff, float(numpy.abs(p_doc[visible] - p_flat).max()))
    for doc, flat in zip(nlp.pipe(texts), nlp.pipe(" ".join(t.split()) for t in texts)):
        blank = blank_mask(doc)
        visible = numpy.flatnonzero(~blank)
        ents = {(e.start, e.end, e.label_) for e in doc.ents}
        flat_ents = {(int(visible[e.start]), int(visible[e.end - 1]) + 1, e.label_) for e in flat.ents}
        if ents == flat_ents:
            same += 1
            continue
        crossing = {e for e in flat_ents if blank[e[0] : e[1]].any()}
        inside = {e for e in ents if any(c[0] <= e[0] and e[1] <= c[1] for c in crossing)}
        split_only += (ents - inside) == (flat_ents - crossing)
    return {"articles": len(texts), "max_abs_prob_diff_visible_tokens": max_diff,
            "same_entities": same, "differ_only_by_entities_split_at_a_line_break": split_only}


def apply(model: str, src: Path, dest: Path, *extra: str) -> Dict[str, object]:
    command = [sys.executable, "-m", "spacy", "apply", model, str(src), str(dest), *extra]
    dest.unlink(missing_ok=True)  # a rerun must not count an earlier run's output
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        print((proc.stdout + proc.stderr)[-2000:], file=sys.stderr)
    return {"command": " ".join(["python", "-m", "spacy", "apply", model, str(src), str(dest), *extra]),
            "exit_code": proc.returncode, "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--text", default="assets/roster/conll/test_text.txt")
    parser.add_argument("--out", default="runs/apply_check")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [line.strip() for line in Path(args.text).read_text(encoding="utf8").splitlines()]
    texts = articles([line for line in lines if line])
    multiline = out / "articles.txt"
    first = "\n\n\n".join(texts[:5])
    multiline.write_text("\t" + first.replace("\n\n", "  \n\n", 1), encoding="utf8")
    jsonl = out / "articles.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf8")

    result: Dict[str, object] = {"model": args.model, "articles": len(texts)}
    nlp = spacy.load(args.model)
    for name, src in (("text_file", multiline), ("jsonl", jsonl)):
        dest = out / f"{name}.spacy"
        run = apply(args.model, src, dest, *(["--text-key", "text"] if name == "jsonl" else []))
        run["input_chars"] = src.stat().st_size
        if run["exit_code"] == 0:
            run.update(summarise(nlp, dest))
        result[name] = run

    result["collapsed_whitespace"] = compare_collapsed(nlp, texts)
    model = Path(args.model).resolve()
    path = ROOT / "benchmarks" / "results" / f"apply_check__{model.parent.name}__{model.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
