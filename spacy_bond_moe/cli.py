"""Command-line interface: ``python -m spacy_bond_moe COMMAND``."""

from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import spacy
import srsly
import typer

from .converters import (
    SPLITS,
    ConversionError,
    DirResults,
    convert_bond_dir,
    convert_roster_dir,
    detect_format,
)
from .distant import (
    CAPITALISED_LABELS,
    DEFAULT_PRIORITY,
    MAX_LINE_CHARS,
    DistantError,
    DistantJob,
    DistantLabeller,
    check_outputs,
    label_file,
    label_sharded,
)
from .engines import ENGINES, EngineError, JobReport
from .ensemble import merge_pipelines
from .fetch import (
    DATASETS,
    MIRROR_ENV,
    MISSING,
    FetchError,
    fetch_files,
    mirror_from_env,
    select_files,
    write_atomic,
)
from .kb_packs import PACKS, build_kb
from .annotate import spans_key
from .rules import RULES
from .shards import MANIFEST
from .upgrade import upgrade_pipeline

app = typer.Typer(
    help="spacy-bond-moe: distantly supervised NER with spaCy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class InputFormat(str, Enum):
    """Benchmark data formats that `convert` reads."""

    bond = "bond"
    roster = "roster"


@app.callback()
def main() -> None:
    """spacy-bond-moe: distantly supervised NER with spaCy."""


def _summary(results: DirResults) -> str:
    """Format per-split counts as a plain-text table; missing splits (and the stale files of
    them that were removed) are listed below it."""
    types = sorted({label for stats in results.values() for label in stats.n_ents})
    rows = [["split", "docs", "tokens", "ents", *types, "repaired", "skipped"]]
    for split, s in results.items():
        counts = [s.n_docs, s.n_tokens, s.n_ents_total, *(s.n_ents.get(t, 0) for t in types)]
        rows.append([split, *map(str, counts + [s.n_repaired, s.n_skipped_empty])])
    widths = [max(len(cell) for cell in column) for column in zip(*rows)]
    lines = [
        "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
        for row in rows
    ]
    removed = {path.stem: path for path in results.removed}
    for split in SPLITS:
        if split not in results:
            stale = f"; removed the stale {removed[split]}" if split in removed else ""
            lines.append(f"{split}: not found, skipped{stale}")
    return "\n".join(lines)


@app.command()
def convert(
    src_dir: Path = typer.Argument(
        ..., help="Dataset folder (BOND *_distant/ or RoSTER data/conll/)."
    ),
    out_dir: Path = typer.Argument(..., help="Folder for train.spacy, dev.spacy, test.spacy."),
    input_format: Optional[InputFormat] = typer.Option(
        None, "--format", "-f", help="Input format; detected from the folder's files if omitted."
    ),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", help="Dataset name used in doc ids; defaults to SRC_DIR's name."
    ),
) -> None:
    """Convert a benchmark dataset folder to spaCy DocBins, one per split."""
    name = dataset or src_dir.resolve().name
    try:
        fmt = input_format.value if input_format else detect_format(src_dir)
        convert_dir = convert_bond_dir if fmt == "bond" else convert_roster_dir
        results = convert_dir(src_dir, out_dir, name)
    except ConversionError as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{name} ({fmt}) -> {out_dir}")
    typer.echo(_summary(results))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Training config (e.g. configs/minilm.cfg)."),
    output_path: Path = typer.Option(..., "--output", "-o", help="Output folder."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the interrupted run in OUTPUT from its training-state "
        "(same config and overrides)."
    ),
    code_path: Optional[Path] = typer.Option(
        None, "--code", "-c", help="Python file with more registered functions to import."
    ),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for CPU."),
) -> None:
    """`spacy train` with kill-safe checkpoints and `--resume`; config overrides as in
    spaCy (--paths.train ...). Writes OUTPUT/model-best, model-last and training-state."""
    from spacy.cli._util import import_code, parse_config_overrides, setup_gpu, show_validation_error
    from spacy.util import load_config

    from .loop import train as train_run

    if not config_path.is_file():
        typer.secho(f"Error: config file not found: {config_path}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    try:
        overrides = parse_config_overrides(ctx.args)
        import_code(code_path)
        setup_gpu(gpu_id)
        with show_validation_error(config_path, hint_fill=False):
            config = load_config(config_path, overrides=overrides, interpolate=False)
            output_path.mkdir(parents=True, exist_ok=True)
            train_run(config, output_path, resume=resume, use_gpu=gpu_id)
    except (ValueError, OSError) as err:  # TrainingError and the config checks: one line
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def fetch(
    dest: Path = typer.Argument(..., help="Folder for the files (e.g. assets), same layout as the mirror."),
    datasets: Optional[List[str]] = typer.Option(
        None, "--dataset", "-d", help=f"Dataset to fetch (repeatable): {', '.join(DATASETS)}. Default: all."
    ),
) -> None:
    """Download the benchmark files (or copy them from $BOND_MOE_DATA_MIRROR) and verify their MD5s."""
    mirror = mirror_from_env()
    try:
        files = select_files(datasets)
        source = f"the mirror {mirror} (${MIRROR_ENV})" if mirror else "commit-pinned GitHub URLs"
        names = ", ".join(dict.fromkeys(f.dataset for f in files))
        typer.echo(f"Fetching {len(files)} files ({names}) into {dest} from {source}")
        results = fetch_files(files, dest, mirror, log=lambda line: typer.echo(f"  {line}"))
    except FetchError as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    counts: Dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    typer.echo("Summary: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    for result in results:
        if result.ok and result.status == MISSING:
            typer.secho(f"Warning: {result.message()}", fg=typer.colors.YELLOW, err=True)
    problems = [result for result in results if not result.ok]
    for result in problems:
        typer.secho(f"Error: {result.message()}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(1)


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="Pipeline to evaluate: a path or an installed package name."),
    corpus_dir: Path = typer.Argument(..., help="Folder with test.spacy and/or dev.spacy."),
    output: Path = typer.Argument(..., help="JSON file for the scores (with the split used)."),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for CPU."),
) -> None:
    """Evaluate on CORPUS_DIR/test.spacy, or on dev.spacy when there is no test split."""
    test_path, dev_path = corpus_dir / "test.spacy", corpus_dir / "dev.spacy"
    if test_path.is_file():
        split, data_path = "test", test_path
    elif dev_path.is_file():
        split, data_path = "dev", dev_path
        typer.secho(
            f"Warning: no test split ({test_path} not found): evaluating on the dev split, "
            "which also selected the best model during training (optimistic scores)",
            fg=typer.colors.YELLOW,
            err=True,
        )
    else:
        typer.secho(f"Error: neither {test_path} nor {dev_path} exists", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    from spacy.cli.evaluate import evaluate as spacy_evaluate

    typer.echo(f"Evaluating {model} on the {split} split ({data_path})")
    scores = spacy_evaluate(model, data_path, use_gpu=gpu_id, silent=False)
    result: Dict[str, Any] = {"split": split, "data_path": str(data_path), "model": model, **scores}
    write_atomic(output, srsly.json_dumps(result, indent=2).encode("utf8") + b"\n")
    prf = " ".join(
        f"{name} {scores[key]:.4f}"
        for name, key in (("P", "ents_p"), ("R", "ents_r"), ("F", "ents_f"))
        if isinstance(scores.get(key), (int, float))
    )
    typer.echo(f"{split} split: {prf or 'no NER scores'} -> {output}")


@app.command()
def smoke(
    model: str = typer.Argument(..., help="Installed package name (e.g. en_bond_moe) or a path."),
    texts: List[str] = typer.Argument(..., help="Text(s) to annotate."),
) -> None:
    """Load a pipeline and print the entities, their confidences and the expert for each text."""
    import spacy

    from .component import EXPERT_EXTENSION

    nlp = spacy.load(model)
    meta = nlp.meta
    typer.echo(f"{meta.get('lang')}_{meta.get('name')} {meta.get('version')} ({model}): {', '.join(nlp.pipe_names)}")
    key = spans_key(nlp) or "bond_moe"
    for doc in nlp.pipe(texts):
        typer.echo(f"Text: {doc.text}")
        group = doc.spans[key] if key in doc.spans else None
        if group is None:
            typer.secho(
                f"Warning: no doc.spans[{key!r}]: not a bond_moe_ner pipeline, no confidences",
                fg=typer.colors.YELLOW,
                err=True,
            )
            pairs = [(ent, None) for ent in doc.ents]
        else:
            pairs = list(zip(group, group.attrs.get("scores", [None] * len(group))))
        for span, score in pairs:
            confidence = "n/a" if score is None else f"{score:.3f}"
            typer.echo(f"  {span.text!r:30} {span.label_:8} confidence {confidence}")
        if not pairs:
            typer.echo("  (no entities)")
        expert = doc._.get(EXPERT_EXTENSION) if doc.has_extension(EXPERT_EXTENSION) else None
        typer.echo(f"  expert: {expert}")


def _names(value: str) -> List[str]:
    """Split a comma-separated option value; empty items are dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


class EngineName(str, Enum):
    """Engines of the sharded commands (see :mod:`.engines`)."""

    local = "local"
    dask = "dask"
    ray = "ray"


class DocFormat(str, Enum):
    """Input formats that `distant` reads."""

    text = "text"
    tokens = "tokens"
    jsonl = "jsonl"
    spacy = "spacy"


@app.command()
def distant(
    input_path: Path = typer.Argument(..., help="Raw text, pre-tokenised text, JSONL or a .spacy DocBin."),
    output: Path = typer.Argument(..., help="Output .spacy DocBin with distant doc.ents and doc ids."),
    kbs: List[Path] = typer.Option(
        ..., "--kb", "-k", help="Knowledge base (repeatable): EntityRuler JSONL or 'name<TAB>type' TSV."
    ),
    input_format: Optional[DocFormat] = typer.Option(
        None,
        "--format",
        "-f",
        help="text = one document per line; tokens = one per line, space-separated tokens; "
        "jsonl = {'text': ...} or {'tokens': [...]} (+ optional 'id'); spacy = DocBin. "
        "Default: from the extension (.spacy, .jsonl, else text).",
    ),
    lang: str = typer.Option("en", "--lang", help="Language of the tokenizer and stop words."),
    rules: str = typer.Option(
        ",".join(RULES), "--rules", help="Comma-separated rule packs to use ('' for none)."
    ),
    ignore_case: bool = typer.Option(
        True, "--ignore-case/--exact-case", help="Match KB phrases case-insensitively (LOWER) or exactly (ORTH)."
    ),
    skip_stopwords: bool = typer.Option(
        True, "--skip-stopwords/--keep-stopwords", help="Drop matches made only of stop words."
    ),
    skip_lowercase: bool = typer.Option(
        True,
        "--skip-lowercase/--keep-lowercase",
        help="Drop matches without any capitalised token. Words of scripts without case (Chinese, "
        "Japanese, Thai: 北京) are not capitalised, so such matches are dropped too unless --caseless-ok.",
    ),
    capitalised: str = typer.Option(
        ",".join(CAPITALISED_LABELS),
        "--capitalised",
        help="Labels whose last token must be capitalised (or a number; caseless words: see --caseless-ok).",
    ),
    caseless_ok: bool = typer.Option(
        False,
        "--caseless-ok/--no-caseless-ok",
        help="Count a word without case distinction (北京, ไทย) as capitalised in the two filters above. "
        "Default off, as before: such drops are counted as 'caseless' in the summary.",
    ),
    max_line_chars: int = typer.Option(
        MAX_LINE_CHARS,
        "--max-line-chars",
        min=1,
        help="Skip input lines longer than this many characters (counted, line numbers in the summary); "
        "spaCy's tokenizer refuses texts of 1,000,000 characters.",
    ),
    priority: str = typer.Option(
        ",".join(DEFAULT_PRIORITY), "--priority", help="Type priority for equally long overlapping matches."
    ),
    propagate: bool = typer.Option(
        True,
        "--propagate/--no-propagate",
        help="Two passes: surnames of multi-word PER matches ('Boris Yeltsin') also label lone "
        "mentions ('Yeltsin') in the whole input.",
    ),
    summary_path: Optional[Path] = typer.Option(
        None, "--summary", help="Summary JSON (default: OUTPUT.summary.json; sharded: in the manifest)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    shard_size: int = typer.Option(
        0, "--shard-size", min=0, help="Docs (input lines) per output DocBin; OUTPUT is then a folder of "
        "shards with a manifest, resumable. 0: one DocBin."
    ),
    n_process: int = typer.Option(1, "--n-process", "-n", min=1, help="Worker processes (sharded output)."),
    engine: EngineName = typer.Option(
        EngineName.local, "--engine", help="Sharded output: local (multiprocessing), dask or ray."
    ),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (engine dask)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (engine ray)."),
) -> None:
    """Build distant labels: match knowledge bases and rules against text, write a DocBin
    (or, with --shard-size, a folder of DocBin shards).

    A leading byte-order mark is removed from text and KB files, NUL characters from the input
    (counted); every output file is written atomically, after checking the output path."""
    options: Dict[str, Any] = dict(
        rules=_names(rules),
        ignore_case=ignore_case,
        skip_stopwords=skip_stopwords,
        skip_lowercase=skip_lowercase,
        capitalised_labels=_names(capitalised),
        priority=_names(priority),
        caseless_ok=caseless_ok,
    )
    if shard_size:
        try:
            cluster = _cluster_address(engine.value, scheduler, address)
            job = DistantJob.create(kbs, lang=lang, max_line_chars=max_line_chars, **options)
            report = label_sharded(
                job, input_path, output, shard_size=shard_size,
                input_format=input_format.value if input_format else None, propagate=propagate,
                engine=engine.value, n_workers=n_process, address=cluster, progress=progress,
            )
        except (DistantError, EngineError, ValueError, OSError) as err:
            typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1)
        _finish_sharded(input_path, output, report)
        totals = srsly.read_json(output / MANIFEST)["totals"]
        typer.echo(f"entities {sum(totals['ents'].values())}: "
                   + ", ".join(f"{label} {n}" for label, n in sorted(totals["ents"].items())))
        return
    if n_process > 1 or engine != EngineName.local:
        typer.secho("Error: --n-process and --engine need sharded output (--shard-size N)",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    try:
        check_outputs(output, summary_path)
        labeller = DistantLabeller.from_kbs(spacy.blank(lang), kbs, **options)
        summary = label_file(
            labeller,
            input_path,
            output,
            input_format=input_format.value if input_format else None,
            summary_path=summary_path,
            progress=progress,
            propagate=propagate,
            max_line_chars=max_line_chars,
        )
    except (DistantError, ValueError) as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{input_path} -> {output}")
    typer.echo(summary.format())


def _cluster_address(engine: str, scheduler: Optional[str], address: Optional[str]) -> Optional[str]:
    """The cluster address for `engine`; a one-line error for an option of the other engine."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if scheduler and engine != "dask":
        raise ValueError("--scheduler is the Dask scheduler's address: use it with --engine dask")
    if address and engine != "ray":
        raise ValueError("--address is the Ray cluster's address: use it with --engine ray")
    return scheduler or address


def _finish_sharded(input_path: Path, output: Path, report: JobReport) -> None:
    """Print the run's summary; exit 1 naming each failed shard (finished ones stay)."""
    typer.echo(f"{input_path} -> {output}/ ({report.manifest.name})")
    typer.echo(report.format())
    for error in report.errors:
        typer.secho(f"Error: {error}", fg=typer.colors.RED, err=True)
    if report.errors:
        typer.secho(f"{len(report.errors)} shard(s) failed; the others are written. Fix the input and "
                    "rerun the same command: only unfinished shards run.", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


class OutputFormat(str, Enum):
    """Output formats of `annotate`."""

    spacy = "spacy"
    jsonl = "jsonl"


@app.command()
def annotate(
    model: str = typer.Argument(..., help="Trained pipeline: a path or an installed package name."),
    input_path: Path = typer.Argument(..., help="Text, pre-tokenised text, JSONL, a DocBin, or a folder of them."),
    output: Path = typer.Argument(..., help="Output folder: shards, their receipts and manifest.json."),
    input_format: Optional[DocFormat] = typer.Option(
        None, "--format", "-f", help="Input format as in `distant`; default from each file's extension."
    ),
    output_format: OutputFormat = typer.Option(
        OutputFormat.spacy, "--output-format", help="spacy = DocBin shards; jsonl = one record per doc "
        "(id, text, entities with confidences, expert)."
    ),
    shard_size: int = typer.Option(10000, "--shard-size", min=1, help="Docs (input lines) per output shard."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="nlp.pipe batch size."),
    n_process: int = typer.Option(1, "--n-process", "-n", min=1, help="Worker processes or workers."),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for CPU."),
    engine: EngineName = typer.Option(
        EngineName.local, "--engine", help="local (multiprocessing), dask or ray."
    ),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address (engine dask)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (engine ray)."),
    max_line_chars: int = typer.Option(MAX_LINE_CHARS, "--max-line-chars", min=1,
                                       help="Skip longer input lines (counted)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with docs/s."),
) -> None:
    """Annotate a corpus with a trained pipeline into sharded DocBins or JSONL: resumable (finished
    shards are skipped), one failed shard does not stop the others."""
    from .annotate import AnnotateJob, annotate as run_annotate

    try:
        cluster = _cluster_address(engine.value, scheduler, address)
        job = AnnotateJob.create(model, output_format=output_format.value, batch_size=batch_size,
                                 gpu_id=gpu_id, max_line_chars=max_line_chars)
        report = run_annotate(job, input_path, output, shard_size=shard_size,
                              input_format=input_format.value if input_format else None,
                              engine=engine.value, n_workers=n_process, address=cluster, progress=progress)
    except (EngineError, ValueError, OSError) as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    _finish_sharded(input_path, output, report)
    totals = srsly.read_json(output / MANIFEST)["totals"]
    typer.echo(f"docs {totals['n_docs']}, words {totals['n_words']}, entities {totals['n_ents']}")


@app.command("report")
def report_command(
    training_dir: Path = typer.Argument(..., help="A `spacy train` output folder of a bond_moe_ner pipeline."),
    data: Optional[Path] = typer.Option(
        None, "--data", "-d", help="Labelled DocBin (dev, test, or the distant train labels): per-expert "
        "scores and the documents where model and labels disagree most."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Folder for index.html and the PNGs "
                                          "(default: TRAINING_DIR/report)."),
    n_docs: int = typer.Option(5, "--n-docs", min=0, help="Documents to render with displaCy (with --data)."),
) -> None:
    """Write an HTML training report with matplotlib figures: dev curve, E-steps, teacher, per type."""
    from .report import ReportError, write_report

    try:
        page = write_report(training_dir, data=data, out=output, n_docs=n_docs)
    except ReportError as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    typer.echo(f"{training_dir} -> {page} ({', '.join(pngs) or 'no figures'})")


@app.command("suggest-kb")
def suggest_kb_command(
    model: str = typer.Argument(..., help="Trained pipeline: a path or an installed package name."),
    corpus: Path = typer.Argument(..., help="Corpus: the distantly labelled DocBin (for suspects too), or raw "
                                  "text / tokens / JSONL."),
    kbs: List[Path] = typer.Option(..., "--kb", "-k", help="The knowledge base files used for labelling (repeatable)."),
    output: Path = typer.Option(..., "--output", "-o", help="EntityRuler JSONL of the suggested additions."),
    tsv: Optional[Path] = typer.Option(None, "--tsv", help="Readable TSV of additions and suspects "
                                       "(default: OUTPUT with .tsv)."),
    input_format: Optional[DocFormat] = typer.Option(None, "--format", "-f", help="Corpus format (as `distant`)."),
    min_count: int = typer.Option(2, "--min-count", min=1, help="Predicted at least this often."),
    min_confidence: float = typer.Option(0.9, "--min-confidence", min=0.0, max=1.0,
                                         help="Mean confidence of the model's predictions at least this."),
    max_agreement: float = typer.Option(0.2, "--max-agreement", min=0.0, max=1.0,
                                        help="Suspects: the model predicts the KB's span at most this often."),
    top: int = typer.Option(100, "--top", min=1, help="At most this many additions and suspects."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
) -> None:
    """Suggest KB additions (confident predictions no KB phrase covers) and suspect KB entries
    (labelled spans the model rejects), for the next `distant` run."""
    import spacy

    from .distant import LabelSummary, detect_input_format, read_docs
    from .suggest import collect, kb_phrases, rank_additions, rank_suspects, summary, write_suggestions

    tsv = tsv or output.with_suffix(".tsv")
    try:
        check_outputs(output, tsv)
        covered = kb_phrases(kbs)
        nlp = spacy.load(model)
        docs = read_docs(corpus, nlp, input_format.value if input_format else detect_input_format(corpus),
                         LabelSummary())
        additions, suspects = collect(nlp, docs, covered, spans_key(nlp), batch_size=batch_size)
        ranked = rank_additions(additions, min_count, min_confidence, top)
        rejected = rank_suspects(suspects, min_count, max_agreement, top)
        write_suggestions(ranked, rejected, output, tsv)
    except (DistantError, ValueError, OSError) as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    counts = summary(ranked, rejected)
    typer.echo(f"{corpus} -> {output} ({counts['additions']} additions: "
               + ", ".join(f"{label} {n}" for label, n in counts["by_label"].items())
               + f"), {tsv} (+ {counts['suspects']} suspects)")


@app.command("build-kb")
def build_kb_command(
    output: Path = typer.Argument(..., help="Output knowledge-base JSONL (EntityRuler patterns + 'source')."),
    packs: str = typer.Option(
        ",".join(PACKS), "--packs", "-p", help=f"Comma-separated packs: {', '.join(PACKS)}."
    ),
    min_population: int = typer.Option(
        15000, "--min-population", help="Smallest city population in the places pack (>= 500)."
    ),
) -> None:
    """Write a gazetteer JSONL from offline PyPI data packages (no network)."""
    try:
        stats = build_kb(_names(packs), output, min_population=min_population)
    except (ImportError, ValueError, OSError) as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{output}: {stats.total} patterns, {len(stats.conflicts)} label conflicts resolved")
    for pack, by_label in stats.entries.items():
        written = ", ".join(f"{label} {n}" for label, n in by_label.items())
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(stats.skipped.get(pack, {}).items()))
        typer.echo(f"  {pack} ({PACKS[pack].requirements}): {written}; skipped: {skipped or 'none'}")


@app.command()
def upgrade(
    model: Path = typer.Argument(..., help="A pipeline saved by spacy-bond-moe 0.1."),
    output: Path = typer.Argument(..., help="Where to write the upgraded pipeline (must not exist)."),
) -> None:
    """Rewrite a 0.1 pipeline's bond_moe_ner options as 0.2 sub-config blocks (no retraining)."""
    try:
        names = upgrade_pipeline(model, output)
    except (ValueError, OSError) as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    done = ", ".join(names) if names else "nothing to upgrade (already 0.2)"
    typer.echo(f"{model} -> {output}: {done}")


@app.command()
def merge(
    output: Path = typer.Argument(..., help="Where to write the merged pipeline (must not exist)."),
    members: List[Path] = typer.Argument(
        ..., help="Two or more K=1 pipelines: one recipe (config) trained with different seeds."),
) -> None:
    """Merge K=1 pipelines trained with different seeds into one pipeline whose experts they
    are (RoSTER's seed ensemble, mixed with equal weights; K times the encoder's cost)."""
    try:
        gaps = merge_pipelines(members, output)
    except (ValueError, OSError) as err:
        typer.secho(f"Error: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(members)} pipelines -> {output}: {len(members)} experts (separate encoders); "
               f"reloaded, each expert reproduces its member (max difference {max(gaps):.1g})")
