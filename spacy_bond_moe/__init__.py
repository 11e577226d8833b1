"""spacy-bond-moe: distantly supervised NER for spaCy with BOND-MoE."""
from .about import __version__
from .architectures import build_empty_safe_pooling_v1, build_expert_heads, build_moe_tagger_v1
from .callbacks import create_em_schedule
from .component import BondMoENER, install_extensions, make_bond_moe_ner
from .loggers import bond_moe_console_logger_v1
from .scorers import make_ner_scorer
from .util import transformer_name_v1

__all__ = [
    "__version__",
    "BondMoENER",
    "make_bond_moe_ner",
    "install_extensions",
    "build_moe_tagger_v1",
    "build_expert_heads",
    "build_empty_safe_pooling_v1",
    "create_em_schedule",
    "bond_moe_console_logger_v1",
    "make_ner_scorer",
    "transformer_name_v1",
]
