"""The training schedule: the one clock (optimizer steps) for shared stage I, label
filters, corpus E-steps and teacher snapshots, run between updates."""
import sys
from typing import Any, Callable, Dict, Iterable

from spacy.language import Language
from spacy.training import Example
from spacy.util import registry, resolve_dot_names
from thinc.api import ConfigValidationError

from .util import require_int


@registry.callbacks("spacy-bond-moe.em_schedule.v3")
def create_em_schedule_v3(
    component: str,
    corpus: Callable[[Language], Iterable[Example]],
    estep_every: int,
    teacher_start: int,
    teacher_refresh: int,
    shared_steps: int = 0,
    filter_every: int = 0,
    batch_size: int = 64,
) -> Callable[[Language, Dict[str, Any]], None]:
    """A `[training.before_update]` callback running BOND-MoE's schedule; every number
    counts optimizer steps (spaCy's `step`, whatever `accumulate_gradient` is).

    component (str): Name of the `bond_moe_ner` pipe.
    corpus (Callable[[Language], Iterable[Example]]): The training corpus, re-read at
        each E-step / teacher refresh / label filter (use a reader without augmentation).
    estep_every (int): Steps between corpus E-steps (0 = never: fixed random routing).
    teacher_start (int): Step at which self-training starts (0 = never).
    teacher_refresh (int): Steps between teacher refreshes (0 = never refresh).
    shared_steps (int): Steps of a shared stage I: until then every document trains every
        expert and no E-step runs (0: routed from the first step).
    filter_every (int): Steps between runs of the component's `label_filter` in stage I
        (RoSTER's noisy-label removal; 0 = never). Runs before an E-step due at the same step.
    batch_size (int): Documents per forward pass during the corpus passes.
    """
    for name, value in (("estep_every", estep_every), ("teacher_start", teacher_start),
                        ("teacher_refresh", teacher_refresh), ("shared_steps", shared_steps),
                        ("filter_every", filter_every)):
        require_int("em_schedule", name, value, 0)
    require_int("em_schedule", "batch_size", batch_size, 1)

    def before_update(nlp: Language, args: Dict[str, Any]) -> None:
        step = args["step"]
        if step == 0:
            check_training_corpora(nlp, corpus)
        pipe = nlp.get_pipe(component)
        pipe.route_updates = step >= shared_steps
        refresh = teacher_start > 0 and (
            step == teacher_start
            or (teacher_refresh > 0 and step > teacher_start
                and (step - teacher_start) % teacher_refresh == 0)
        )
        if refresh:
            pipe.snapshot_teacher(corpus(nlp), nlp=nlp, batch_size=batch_size, step=step)
        elif filter_every > 0 and step > 0 and step % filter_every == 0 and not pipe.teacher.active:
            pipe.filter_labels(corpus(nlp), nlp=nlp, batch_size=batch_size, step=step)
        estep_due = estep_every > 0 and (refresh or (step > 0 and step % estep_every == 0))
        if pipe.n_experts > 1 and pipe.route_updates and estep_due:
            pipe.reassign_experts(corpus(nlp), nlp=nlp, batch_size=batch_size, step=step)

    return before_update


def check_training_corpora(nlp: Language, corpus: Callable[[Language], Iterable[Example]]) -> None:
    """Before the first update (`spacy train` and `python -m spacy_bond_moe train` alike): the
    dev corpus of `[training] dev_corpus` and the training corpus must hold entities
    (`loop.check_corpora`). Skipped where the config names no dev corpus (no training run)."""
    from .loop import check_corpora

    config = nlp.config.interpolate()
    dev_name = config.get("training", {}).get("dev_corpus")
    try:
        (dev_corpus,) = resolve_dot_names(config, [dev_name])
    except (KeyError, TypeError, ValueError, ConfigValidationError):
        return
    paths = config.get("paths", {})
    check_corpora(nlp, corpus, dev_corpus, str(paths.get("train", "the training corpus")),
                  str(paths.get("dev", dev_name)), sys.stderr)


@registry.callbacks("spacy-bond-moe.em_schedule.v2")
def create_em_schedule_v2(
    component: str, corpus: Callable[[Language], Iterable[Example]], estep_every: int,
    teacher_start: int, teacher_refresh: int, shared_steps: int = 0, batch_size: int = 64,
) -> Callable[[Language, Dict[str, Any]], None]:
    """`spacy-bond-moe.em_schedule.v3` without the label filter (v0.2 configs)."""
    return create_em_schedule_v3(component, corpus, estep_every, teacher_start,
                                 teacher_refresh, shared_steps, 0, batch_size)


@registry.callbacks("spacy-bond-moe.em_schedule.v1")
def create_em_schedule(
    component: str,
    corpus: Callable[[Language], Iterable[Example]],
    estep_every: int,
    teacher_start: int,
    teacher_refresh: int,
    batch_size: int = 64,
) -> Callable[[Language, Dict[str, Any]], None]:
    """`spacy-bond-moe.em_schedule.v3` without a shared stage I (v0.1 configs)."""
    return create_em_schedule_v3(component, corpus, estep_every, teacher_start,
                                 teacher_refresh, 0, 0, batch_size)
