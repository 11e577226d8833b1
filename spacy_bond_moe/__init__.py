"""spacy-bond-moe: distantly supervised NER for spaCy with BOND-MoE."""
from .about import __version__
from .architectures import (
    build_case_aware_tok2vec_v1,
    build_empty_safe_pooling_v1,
    build_expert_heads,
    build_frozen_torch_params_v1,
    build_length_grouped_tok2vec_v1,
    build_moe_tagger_v1,
)
from .batching import configure_length_buckets_v1, length_buckets
from .callbacks import create_em_schedule, create_em_schedule_v2, create_em_schedule_v3
from .component import BondMoENER, install_extensions, make_bond_moe_ner
from .denoise import ConfidenceFilter, build_confidence_filter_v1
from .em import Assigner, Router, build_argmax_assigner_v1, build_sinkhorn_assigner_v1
from .loggers import bond_moe_console_logger_v1
from .losses import (
    DistantLoss, build_cross_entropy_v1, build_cross_entropy_v2, build_gce_v1, build_gce_v2,
)
from .teacher import Teacher, build_hard_pseudo_labels_v1, build_soft_pseudo_labels_v1
from .util import transformer_name_v1

__all__ = [
    "__version__",
    "BondMoENER",
    "make_bond_moe_ner",
    "install_extensions",
    "build_moe_tagger_v1",
    "build_expert_heads",
    "build_empty_safe_pooling_v1",
    "build_case_aware_tok2vec_v1",
    "build_frozen_torch_params_v1",
    "build_length_grouped_tok2vec_v1",
    "configure_length_buckets_v1",
    "length_buckets",
    "create_em_schedule",
    "create_em_schedule_v2",
    "create_em_schedule_v3",
    "Assigner",
    "Router",
    "build_sinkhorn_assigner_v1",
    "build_argmax_assigner_v1",
    "Teacher",
    "build_soft_pseudo_labels_v1",
    "build_hard_pseudo_labels_v1",
    "DistantLoss",
    "build_cross_entropy_v1",
    "build_cross_entropy_v2",
    "build_gce_v1",
    "build_gce_v2",
    "ConfidenceFilter",
    "build_confidence_filter_v1",
    "bond_moe_console_logger_v1",
    "transformer_name_v1",
]
