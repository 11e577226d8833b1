"""Command-line interface: ``python -m spacy_bond_moe COMMAND``."""

from enum import Enum
from pathlib import Path
from typing import Dict, Optional

import typer

from .converters import (
    SPLITS,
    ConversionError,
    ConversionStats,
    convert_bond_dir,
    convert_roster_dir,
    detect_format,
)

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


def _summary(results: Dict[str, ConversionStats]) -> str:
    """Format per-split counts as a plain-text table; missing splits are listed below it."""
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
    lines += [f"{split}: not found, skipped" for split in SPLITS if split not in results]
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
