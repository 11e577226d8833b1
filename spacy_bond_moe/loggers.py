"""Training logger: spaCy's console table plus BOND-MoE's E-step and teacher events."""
import json
import sys
from pathlib import Path
from typing import IO, Any, Callable, Dict, Optional, Tuple, Union

from spacy.language import Language
from spacy.training.loggers import console_logger_v3
from spacy.util import registry

from .component import BondMoENER

def format_event(event: Dict[str, Any]) -> str:
    if event["event"] == "estep":
        loads = "/".join(str(x) for x in event["loads"])
        return (
            f"[bond_moe] E-step @ step {event['step']}: loads {loads}, "
            f"changed {event['changed']}/{event['n_docs']} docs, "
            f"sinkhorn residual {event['sinkhorn_residual']:.1e}, {event['seconds']:.1f}s"
        )
    if event["event"] == "teacher":
        what = f"teacher {event['source']} adopted" if event.get("source") else "teacher refreshed"
        return (
            f"[bond_moe] {what} @ step {event['step']}: {event['n_docs']} docs, "
            f"kept {event['kept_fraction']:.1%} of {event['n_tokens']} tokens, {event['seconds']:.1f}s"
        )
    if event["event"] == "label_filter":
        reset = f", kept whole: {'/'.join(event['reset_types'])}" if event["reset_types"] else ""
        return (
            f"[bond_moe] label filter @ step {event['step']}: removed "
            f"{event['removed_fraction']:.1%} of {event['n_labelled']} distant labels{reset}, "
            f"{event['seconds']:.1f}s"
        )
    return f"[bond_moe] {event}"


@registry.loggers("spacy-bond-moe.ConsoleLogger.v1")
def bond_moe_console_logger_v1(
    progress_bar: Optional[str] = None,
    console_output: bool = True,
    output_file: Optional[Union[str, Path]] = None,
    events_path: Optional[Union[str, Path]] = None,
) -> Callable:
    """spacy.ConsoleLogger.v3, plus one line per E-step / teacher refresh.

    events_path (Optional[Union[str, Path]]): JSON-lines file receiving the events and
        every evaluation (step, scores, teacher age), e.g. `bond_moe_events.jsonl` in the
        training output directory; None: no file. An explicit path, so that training
        started from Python (`spacy.cli.train.train`) logs like `spacy train`.
    """
    base = console_logger_v3(progress_bar, console_output, output_file)

    def setup_logger(
        nlp: Language, stdout: IO = sys.stdout, stderr: IO = sys.stderr
    ) -> Tuple[Callable[[Optional[Dict[str, Any]]], None], Callable[[], None]]:
        log_base, finalize_base = base(nlp, stdout, stderr)
        pipes = [(name, pipe) for name, pipe in nlp.components if isinstance(pipe, BondMoENER)]
        path = Path(events_path) if events_path else None
        handle = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            resumed = any(pipe.resumed_at is not None for _, pipe in pipes)
            # a resumed run (python -m spacy_bond_moe train --resume) continues the file,
            # which the loop has cut back to the saved step
            handle = path.open("a" if resumed else "w", encoding="utf8")

        def write(record: Dict[str, Any]) -> None:
            if handle is not None:
                handle.write(json.dumps(record) + "\n")
                handle.flush()

        def log_step(info: Optional[Dict[str, Any]]) -> None:
            for name, pipe in pipes:
                for event in pipe.pop_events():
                    if console_output:
                        stdout.write(format_event(event) + "\n")
                    write({"component": name, **event})
            if info is not None:
                for name, pipe in pipes:
                    write({
                        "component": name,
                        "event": "eval",
                        "step": info["step"],
                        "epoch": info["epoch"],
                        "score": info["score"],
                        "scores": {k: v for k, v in info["other_scores"].items()
                                   if not isinstance(v, dict)},
                        "loss": float(info["losses"].get(name, 0.0)),
                        "teacher_age": pipe.teacher.age(info["step"]),
                        "expert_prior": pipe.cfg["expert_prior"],
                    })
            log_base(info)

        def finalize() -> None:
            finalize_base()
            if handle is not None:
                handle.close()

        return log_step, finalize

    return setup_logger
