"""Registered scorer: spaCy's entity P/R/F (overall and per type)."""
from typing import Any, Callable, Dict, Iterable

from spacy.scorer import get_ner_prf
from spacy.training import Example
from spacy.util import registry


def score_ents(examples: Iterable[Example], **kwargs: Any) -> Dict[str, Any]:
    """ents_p / ents_r / ents_f and ents_per_type, as spaCy's `ner` reports them."""
    return get_ner_prf(examples)


@registry.scorers("spacy-bond-moe.ner_scorer.v1")
def make_ner_scorer() -> Callable[..., Dict[str, Any]]:
    return score_ents
