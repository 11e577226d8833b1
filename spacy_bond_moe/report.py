"""The training report: what a `spacy train` run of ``bond_moe_ner`` did, as one HTML page with
PNG figures (matplotlib) beside it.

From the run folder: dev P/R/F1 over steps with the E-step and teacher-refresh marks, expert
loads and changed documents per E-step, the teacher's kept-token share per refresh (all from
the events file of ``spacy-bond-moe.ConsoleLogger.v1``), and the best model's per-type scores
(its ``meta.json``). With labelled data: each expert alone against the mixture, the experts'
token agreement, and displaCy renderings of the documents where the model and the data's labels
(e.g. the distant labels) disagree most.
"""

import html
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy
import srsly
from spacy.tokens import Doc, DocBin

from .converters import DOC_ID_KEY
from .fetch import write_atomic
from .losses import EPS
from .tags import tags_to_spans, transition_mask, viterbi_decode
from .util import FACTORY, InputError

EVENTS_FILE = "bond_moe_events.jsonl"
Spans = Set[Tuple[int, int, str]]


class ReportError(InputError):
    """A folder that is not a training output of this component, or unreadable data."""


@dataclass
class TrainingRun:
    """What the report reads from a training output folder."""

    directory: Path
    model: Path
    component: str
    meta: Dict[str, Any]
    events: List[Dict[str, Any]] = field(default_factory=list)
    events_path: Optional[Path] = None

    def of_kind(self, kind: str) -> List[Dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind and e.get("component") == self.component]


def load_run(directory: Path) -> TrainingRun:
    """The model (model-best, else model-last), its ``bond_moe_ner`` component and the events."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(directory, "not a folder")
    model = next((directory / name for name in ("model-best", "model-last") if (directory / name).is_dir()), None)
    if model is None:
        raise ReportError(directory, "not a spacy train output folder: no model-best/ or model-last/ in it")
    try:
        meta = srsly.read_json(model / "meta.json")
        from spacy.util import load_config

        pipeline = load_config(model / "config.cfg", interpolate=False)
    except (OSError, ValueError) as err:
        raise ReportError(model, f"cannot read the pipeline's meta.json or config.cfg ({err})") from None
    names = [name for name, block in pipeline["components"].items() if block.get("factory") == FACTORY]
    if not names:
        raise ReportError(model, f"this pipeline has no {FACTORY} component: not a spacy-bond-moe training output")
    run = TrainingRun(directory, model, names[0], meta)
    logger = pipeline.get("training", {}).get("logger", {})
    candidates = [Path(str(logger["events_path"]))] if logger.get("events_path") else []
    for path in candidates + [directory / EVENTS_FILE]:
        if path.is_file():
            run.events_path = path
            run.events = _read_events(path)
            break
    return run


def _read_events(path: Path) -> List[Dict[str, Any]]:
    """The events, one JSON per line; a cut last line (a run killed while writing it) is dropped."""
    lines = path.read_text(encoding="utf8").splitlines()
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ReportError(path, "not a JSON line", number) from None
    return events


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    _pyplot().close(fig)
    return path.name


def plot_dev_curve(run: TrainingRun, out: Path) -> Optional[str]:
    """Dev P/R/F1 over steps, the first E-step (end of a shared stage I) and teacher refreshes."""
    evals = [e for e in run.of_kind("eval") if "ents_f" in e.get("scores", {})]
    if not evals:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    steps = [e["step"] for e in evals]
    for key, name in (("ents_f", "F1"), ("ents_p", "precision"), ("ents_r", "recall")):
        ax.plot(steps, [100 * e["scores"][key] for e in evals], marker="o", markersize=3, label=f"dev {name}")
    for i, event in enumerate(run.of_kind("teacher")):
        ax.axvline(event["step"], color="tab:green", linestyle=":", label="teacher refresh" if i == 0 else None)
    esteps = run.of_kind("estep")
    if esteps:
        ax.axvline(esteps[0]["step"], color="tab:red", linestyle="--", label="first E-step")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Dev scores during training")
    return _save(fig, out / "dev_curve.png")


def plot_experts(run: TrainingRun, out: Path) -> Optional[str]:
    """Documents per expert (stacked) and documents that changed expert, per E-step."""
    esteps = run.of_kind("estep")
    if not esteps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 3.5))
    x = numpy.arange(len(esteps))
    bottom = numpy.zeros(len(esteps))
    for k in range(len(esteps[0]["loads"])):
        loads = numpy.array([e["loads"][k] for e in esteps], dtype=float)
        ax.bar(x, loads, bottom=bottom, label=f"expert {k}")
        bottom += loads
    ax.plot(x, [e["changed"] for e in esteps], color="black", marker="o", label="changed expert")
    ax.set_xticks(x, [str(e["step"]) for e in esteps])
    ax.set_xlabel("E-step at optimizer step")
    ax.set_ylabel("documents")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title("Expert loads per E-step")
    return _save(fig, out / "experts.png")


def plot_teacher(run: TrainingRun, out: Path) -> Optional[str]:
    """The share of tokens the teacher kept as pseudo-labels, per refresh."""
    refreshes = run.of_kind("teacher")
    if not refreshes:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    ax.bar([str(e["step"]) for e in refreshes], [100 * e["kept_fraction"] for e in refreshes], color="tab:green")
    ax.set_xlabel("teacher refresh at optimizer step")
    ax.set_ylabel("kept tokens %")
    ax.set_ylim(0, 100)
    ax.set_title("Teacher: pseudo-labelled tokens kept")
    return _save(fig, out / "teacher.png")


def plot_per_type(per_type: Dict[str, Dict[str, float]], out: Path, name: str, title: str) -> Optional[str]:
    if not per_type:
        return None
    plt = _pyplot()
    labels = sorted(per_type)
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    x = numpy.arange(len(labels))
    for i, (key, legend) in enumerate((("p", "precision"), ("r", "recall"), ("f", "F1"))):
        ax.bar(x + (i - 1) * 0.27, [100 * per_type[label][key] for label in labels], width=0.27, label=legend)
    ax.set_xticks(x, labels)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, out / name)


def prf(pred: Sequence[Spans], gold: Sequence[Spans]) -> Dict[str, float]:
    """Entity-level micro precision, recall and F1."""
    tp = sum(len(p & g) for p, g in zip(pred, gold))
    n_pred, n_gold = sum(map(len, pred)), sum(map(len, gold))
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"p": p, "r": r, "f": 2 * p * r / (p + r) if p + r else 0.0}


def expert_analysis(nlp: Any, component: str, gold_docs: Sequence[Doc]) -> Dict[str, Any]:
    """Each expert decoded alone (same constrained Viterbi) and the mixture, scored against the
    docs' entities; pairwise token argmax agreement; the mixture's spans per doc."""
    pipe = nlp.get_pipe(component)
    docs = [Doc(nlp.vocab, words=[t.text for t in d], spaces=[bool(t.whitespace_) for t in d]) for d in gold_docs]
    for name, proc in nlp.pipeline:
        if name == component:
            break
        docs = list(proc.pipe(docs))
    probs = [pipe.model.ops.to_numpy(p) for p in pipe.predict(docs)]
    start, trans = transition_mask(pipe.tags)
    gold = [{(e.start, e.end, e.label_) for e in d.ents} for d in gold_docs]

    def decode(dist: numpy.ndarray, doc: Doc) -> Spans:
        if len(doc) == 0:
            return set()
        path = viterbi_decode(numpy.log(dist + EPS), start, trans)
        return {(s.start, s.end, s.label_) for s in tags_to_spans(doc, path, pipe.tags)}

    mixture = [decode(pipe.combine(p), d) for p, d in zip(probs, docs)]
    scores = {f"expert {i}": prf([decode(p[:, i], d) for p, d in zip(probs, docs)], gold)
              for i in range(pipe.n_experts)}
    scores["mixture"] = prf(mixture, gold)
    agreement = {}
    for a, b in itertools.combinations(range(pipe.n_experts), 2):
        same = sum(int((p[:, a].argmax(-1) == p[:, b].argmax(-1)).sum()) for p in probs)
        agreement[f"{a}-{b}"] = same / max(sum(len(p) for p in probs), 1)
    return {"scores": scores, "agreement": agreement, "predicted": mixture, "gold": gold, "docs": docs}


def plot_experts_alone(scores: Dict[str, Dict[str, float]], out: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    names = list(scores)
    ax.bar(names, [100 * scores[n]["f"] for n in names],
           color=["tab:blue"] * (len(names) - 1) + ["tab:orange"])
    ax.set_ylabel("F1 %")
    ax.set_title("Each expert alone vs the mixture")
    return _save(fig, out / "experts_alone.png")


def _render(doc: Doc, spans: Spans, title: str) -> str:
    from spacy import displacy

    ents = [{"start": doc[s:e].start_char, "end": doc[s:e].end_char, "label": label}
            for s, e, label in sorted(spans)]
    return displacy.render({"text": doc.text, "ents": ents, "title": title}, style="ent", manual=True, page=False)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def write_report(directory: Path, data: Optional[Path] = None, out: Optional[Path] = None,
                 n_docs: int = 5) -> Path:
    """Write ``index.html`` and its PNGs into `out` (default ``DIRECTORY/report``); returns the page."""
    run = load_run(directory)
    out = Path(out) if out else run.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    perf = run.meta.get("performance", {})
    parts = [f"<h1>Training report: {html.escape(str(run.directory))}</h1>",
             f"<p>Model: <code>{html.escape(str(run.model))}</code> (component <code>{run.component}</code>, "
             f"spaCy {html.escape(str(run.meta.get('spacy_version', '?')))}). Events: "
             f"<code>{html.escape(str(run.events_path))}</code>.</p>" if run.events_path else
             f"<p>Model: <code>{html.escape(str(run.model))}</code>. No events file ({EVENTS_FILE} or the "
             "logger's events_path): train with the spacy-bond-moe.ConsoleLogger.v1 logger for the curves.</p>"]
    parts.append("<h2>Best model (dev, from meta.json)</h2>")
    parts.append(_table(["", "precision", "recall", "F1"],
                        [["entities", _pct(perf.get("ents_p")), _pct(perf.get("ents_r")), _pct(perf.get("ents_f"))]]
                        + [[label, _pct(s["p"]), _pct(s["r"]), _pct(s["f"])]
                           for label, s in sorted((perf.get("ents_per_type") or {}).items())]))
    evals = [e for e in run.of_kind("eval") if "ents_f" in e.get("scores", {})]
    if evals:
        best = max(evals, key=lambda e: e["scores"]["ents_f"])
        parts.append(f"<p>Best dev F1 {_pct(best['scores']['ents_f'])} at step {best['step']} of {evals[-1]['step']} "
                     f"({len(evals)} evaluations; last {_pct(evals[-1]['scores']['ents_f'])}).</p>")
    figures = [("Dev scores over training", plot_dev_curve(run, out)),
               ("Experts per E-step", plot_experts(run, out)),
               ("Teacher refreshes", plot_teacher(run, out)),
               ("Per type (best model, dev)", plot_per_type(perf.get("ents_per_type") or {}, out, "per_type.png",
                                                            "Best model per type (dev)"))]
    esteps, refreshes = run.of_kind("estep"), run.of_kind("teacher")
    if esteps:
        parts.append("<h2>E-steps</h2>" + _table(
            ["step", "loads", "changed docs", "Sinkhorn residual"],
            [[str(e["step"]), "/".join(map(str, e["loads"])), f"{e['changed']} of {e['n_docs']}",
              f"{e['sinkhorn_residual']:.1e}"] for e in esteps]))
    if refreshes:
        parts.append("<h2>Teacher refreshes</h2>" + _table(
            ["step", "kept tokens", "of tokens"],
            [[str(e["step"]), f"{100 * e['kept_fraction']:.1f}%", str(e["n_tokens"])] for e in refreshes]))
    if data is not None:
        parts += _data_parts(run, Path(data), out, n_docs, figures)
    for title, name in figures:
        if name:
            parts.append(f"<h2>{html.escape(title)}</h2><img src=\"{name}\" alt=\"{html.escape(title)}\">")
        else:
            parts.append(f"<h2>{html.escape(title)}</h2><p>Not recorded in this run.</p>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;"
             "text-align:right}img{max-width:100%}code{background:#f4f4f4}")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>bond_moe_ner training report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    path = out / "index.html"
    write_atomic(path, page.encode("utf8"))
    return path


def _data_parts(run: TrainingRun, data: Path, out: Path, n_docs: int,
                figures: List[Tuple[str, Optional[str]]]) -> List[str]:
    """Per-expert scores on `data` and the documents where model and labels disagree most."""
    import spacy

    nlp = spacy.load(run.model)
    try:
        gold_docs = list(DocBin().from_disk(data).get_docs(nlp.vocab))
    except (OSError, ValueError) as err:
        raise ReportError(data, f"cannot read DocBin ({err})") from None
    analysis = expert_analysis(nlp, run.component, gold_docs)
    scores = analysis["scores"]
    figures.append((f"Experts alone vs the mixture on {data.name}", plot_experts_alone(scores, out)))
    parts = [f"<h2>Experts on {html.escape(str(data))} ({len(gold_docs)} docs)</h2>",
             _table(["", "precision", "recall", "F1"],
                    [[name, _pct(s["p"]), _pct(s["r"]), _pct(s["f"])] for name, s in scores.items()])]
    if analysis["agreement"]:
        parts.append("<p>Token argmax agreement between experts: " + ", ".join(
            f"{pair}: {100 * value:.1f}%" for pair, value in analysis["agreement"].items()) + "</p>")
    ranked = sorted(range(len(gold_docs)), key=lambda i: (-len(analysis["predicted"][i] ^ analysis["gold"][i]), i))
    parts.append(f"<h2>The {min(n_docs, len(ranked))} documents where the model and the labels of "
                 f"{html.escape(data.name)} disagree most</h2>")
    for i in ranked[:n_docs]:
        doc = analysis["docs"][i]
        parts.append(f"<h3>{html.escape(str(gold_docs[i].user_data.get(DOC_ID_KEY, i)))}</h3>"
                     + _render(doc, analysis["predicted"][i], "model") + _render(doc, analysis["gold"][i], "labels"))
    return parts
