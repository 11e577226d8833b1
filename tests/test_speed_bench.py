"""benchmarks/speed.py: the JSON of a tiny run (CNN config, toy corpus, 2 steps) and its parsers.

No timing assertions: only that every figure is there, positive and consistent.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import spacy

from .conftest import make_examples, write_docbin

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("k1", "k3_shared", "k3_separate")


def load_speed():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "benchmarks" / "speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


speed = load_speed()


@pytest.fixture(scope="module")
def toy_corpus(tmp_path_factory) -> Path:
    nlp = spacy.blank("en")
    directory = tmp_path_factory.mktemp("speed_corpus")
    write_docbin(directory / "train.spacy",
                 [eg.reference for eg in make_examples(nlp, copies=10, prefix="train")])
    write_docbin(directory / "dev.spacy",
                 [eg.reference for eg in make_examples(nlp, copies=2, prefix="dev")])
    return directory


def run_script(corpus: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--config", "configs/cnn.cfg",
           "--train", str(corpus / "train.spacy"), "--dev", str(corpus / "dev.spacy"),
           "--steps", "2", "--warmup", "1", "--pipe-repeats", "1", "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train w/s" in proc.stdout  # the table
    return json.loads(out.read_text(encoding="utf8"))


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def check_variant(name: str, res: dict, n_train: int) -> None:
    assert "error" not in res, res
    assert res["n_experts"] == (1 if name == "k1" else 3)
    assert res["expert_mode"] == ("separate" if name == "k3_separate" else "shared")
    train = res["train"]
    assert train["steps"] == 2 and train["warmup"] == 1 and train["batch_sentences"] == 16
    for key in ("words", "seconds", "words_per_s", "s_per_step", "epoch_s"):
        assert positive(train[key]), key
    assert train["words_per_s"] == pytest.approx(train["words"] / train["seconds"])
    assert train["epoch_steps"] == pytest.approx(n_train / 16)
    assert train["epoch_s"] == pytest.approx(train["epoch_steps"] * train["s_per_step"])
    assert train["padded_over_words"] >= 1.0
    for key in ("teacher_snapshot_s", "teacher_refresh_s", "pipe_words_per_s", "peak_rss_mb",
                "teacher_words_per_s", "pipe_train_words_per_s",
                "n_params", "torch_threads", "build_init_s", "model_size_mb"):
        assert positive(res[key]), key
    assert res["n_train_docs"] == n_train
    if name == "k1":
        assert res["estep_s"] is None and res["estep_share"] is None
        assert res["estep_words_per_s"] is None
    else:
        assert positive(res["estep_s"])
        assert res["estep_words_per_s"] == pytest.approx(res["n_train_words"] / res["estep_s"])
        assert 0 < res["estep_share"] < 1
        assert res["estep_share"] == pytest.approx(
            res["estep_s"] / (res["estep_s"] + train["epoch_s"]))
        assert res["estep_over_epoch"] == pytest.approx(res["estep_s"] / train["epoch_s"])
        assert sum(res["estep_loads"]) == n_train


def test_speed_script_all_variants(toy_corpus, tmp_path):
    out = tmp_path / "speed.json"
    data = run_script(toy_corpus, out, "--no-spacy-benchmark")
    assert list(data["variants"]) == list(VARIANTS)
    for name, res in data["variants"].items():
        check_variant(name, res, n_train=40)
        assert res["spacy_benchmark"] is None
    variants = data["variants"]
    # separate = 3 encoders: about 3x the parameters of one shared encoder + 3 heads
    assert variants["k3_separate"]["n_params"] > 2.5 * variants["k1"]["n_params"]
    assert variants["k3_shared"]["n_params"] > variants["k1"]["n_params"]
    ratios = data["ratios"]
    for key in ("train_wps_k3_shared_over_k1", "train_wps_k3_separate_over_k1",
                "pipe_wps_k3_shared_over_k1", "pipe_wps_k3_separate_over_k1",
                "peak_rss_k3_shared_over_k1", "peak_rss_k3_separate_over_k1"):
        assert positive(ratios[key]) and ratios[key] < 20, key
    assert ratios["infer_wps_k3_shared_over_k1"] is None  # no spacy benchmark
    assert ratios["train_wps_k3_shared_over_k1"] == pytest.approx(
        variants["k3_shared"]["train"]["words_per_s"] / variants["k1"]["train"]["words_per_s"])
    targets = data["targets"]
    assert targets["infer_wps_k3_shared_over_k1"]["source"] == "nlp.pipe"
    assert targets["estep_share_k3_shared"]["met"] in (True, False)
    assert targets["train_wps_k3_shared_over_k1"]["target"] == ">= 0.91"
    assert targets["train_wps_k1_over_before"]["met"] is None  # no `_before` variant run
    for key in ("estep_wps_k3_shared_over_inference", "teacher_wps_k1_over_inference"):
        assert positive(ratios[key]) and targets[key]["target"] == ">= 0.9", key
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1
    assert len(machine["loadavg_at_start"]) == 3 and len(machine["loadavg_at_end"]) == 3
    assert "benchmarks/speed.py" in data["command"] and "git" in data
    assert data["settings"]["steps"] == 2 and data["config"] == "configs/cnn.cfg"


def test_speed_script_spacy_benchmark(toy_corpus, tmp_path):
    out = tmp_path / "speed.json"
    data = run_script(toy_corpus, out, "--variants", "k1", "--bench-batch-size", "2",
                      "--bench-warmup", "0")
    res = data["variants"]["k1"]
    check_variant("k1", res, n_train=40)
    bench = res["spacy_benchmark"]
    assert positive(bench["words_per_s"]) and positive(bench["peak_rss_mb"])
    assert bench["ci95_low"] <= bench["words_per_s"] <= bench["ci95_high"]
    assert bench["batches"] == 30 and bench["batch_size"] == 2
    assert "--batch-size 2" in bench["command"]
    assert data["ratios"]["spacy_benchmark_over_pipe_k1"] == pytest.approx(
        bench["words_per_s"] / res["pipe_words_per_s"])
    assert data["ratios"]["train_wps_k3_shared_over_k1"] is None  # k3 not run
    sample = res["bench_sample"]  # the benchmark's sample and statistic, in the child
    assert (sample["batches"], sample["batch_size"]) == (30, 2)
    assert positive(sample["mean_batch_words_per_s"]) and positive(sample["total_words_per_s"])
    assert data["ratios"]["bench_sample_total_over_pipe_k1"] == pytest.approx(
        sample["total_words_per_s"] / res["pipe_words_per_s"])


@pytest.mark.slow  # three child processes, about a minute: `make test-slow`
def test_speed_script_references_spacy_ner_and_raw_encoder(toy_corpus, tmp_path, tiny_bert):
    """spaCy's CNN ner beside K=1, then the raw tiny BERT with its matmul bound; the ratios to
    both references."""
    data = run_script(toy_corpus, tmp_path / "speed.json", "--variants", "spacy_ner,k1",
                      "--no-spacy-benchmark")
    for config in ("minilm.cfg", "minilm_fast.cfg", "bond_moe_paper.cfg"):
        assert speed.variant_config("spacy_ner", ROOT / "configs" / config) == \
            ROOT / "configs" / "spacy_ner_minilm.cfg"
    assert speed.variant_config("k1_before", ROOT / "configs" / "cnn.cfg") == \
        ROOT / "configs" / "bond_moe_paper.cfg"
    ner, k1 = data["variants"]["spacy_ner"], data["variants"]["k1"]
    assert ner["config"] == "configs/spacy_ner_cnn.cfg" and k1["config"] == "configs/cnn.cfg"
    assert ner["estep_s"] is None and ner["teacher_refresh_s"] is None
    assert positive(ner["train"]["words_per_s"]) and positive(ner["pipe_words_per_s"])
    assert data["ratios"]["train_wps_k1_over_spacy_ner"] == pytest.approx(
        k1["train"]["words_per_s"] / ner["train"]["words_per_s"])
    assert data["ratios"]["pipe_wps_k1_over_spacy_ner"] == pytest.approx(
        k1["pipe_words_per_s"] / ner["pipe_words_per_s"])
    data = run_script(toy_corpus, tmp_path / "raw.json", "--variants", "raw_encoder",
                      "--encoder", str(tiny_bert))
    raw = data["variants"]["raw_encoder"]
    assert raw["encoder"] == str(tiny_bert) and raw["spacy_benchmark"] is None
    assert raw["train"]["steps"] == 2 and raw["train"]["padded_over_words"] >= 1.0
    assert raw["wordpieces_per_word"] > 1.0 and positive(raw["matmul_gflops"])
    assert raw["mflop_per_word_forward"] == pytest.approx(
        2 * raw["linear_weights"] * raw["wordpieces_per_word"] / 1e6)
    assert raw["bound_forward_words_per_s"] == pytest.approx(
        raw["matmul_gflops"] * 1e3 / raw["mflop_per_word_forward"])
    assert raw["bound_train_words_per_s"] == pytest.approx(raw["bound_forward_words_per_s"] / 3)
    assert len(raw["pipe_words_per_s_runs"]) == 1 and positive(raw["forward_words_per_s"]["median"])
    assert data["ratios"]["raw_forward_over_bound"] == pytest.approx(
        raw["pipe_words_per_s"] / raw["bound_forward_words_per_s"])


def test_parse_spacy_benchmark():
    output = ("Warming up for 1 epochs...\n\nBenchmarking 30 batches...\n\n"
              "Outliers: 3.3%, extreme outliers: 0.0%\n"
              "Mean: 1523.4 words/s (95% CI: -41.2 +38.9)\n")
    parsed = speed.parse_spacy_benchmark(output)
    assert parsed == pytest.approx({"words_per_s": 1523.4, "ci95_low": 1482.2,
                                    "ci95_high": 1562.3, "outliers_pct": 3.3})
    with pytest.raises(ValueError):
        speed.parse_spacy_benchmark("Traceback ...")


def test_ratios_and_targets():
    results = {
        "k1": {"train": {"words_per_s": 200.0}, "spacy_benchmark": {"words_per_s": 600.0},
               "pipe_words_per_s": 500.0, "peak_rss_mb": 1000.0, "estep_share": None},
        "k3_shared": {"train": {"words_per_s": 190.0}, "spacy_benchmark": {"words_per_s": 510.0},
                      "pipe_words_per_s": 450.0, "peak_rss_mb": 1100.0, "estep_share": 0.12},
        "k3_separate": {"error": "exit 1"},
    }
    ratios = speed.compute_ratios(results)
    assert ratios["train_wps_k3_shared_over_k1"] == pytest.approx(0.95)
    assert ratios["infer_wps_k3_shared_over_k1"] == pytest.approx(0.85)
    assert ratios["spacy_benchmark_over_pipe_k1"] == pytest.approx(1.2)
    assert ratios["spacy_benchmark_over_pipe_k3_shared"] == pytest.approx(510.0 / 450.0)
    assert "spacy_benchmark_over_pipe_k3_separate" not in ratios
    assert ratios["train_wps_k3_separate_over_k1"] is None
    targets = speed.check_targets(results, ratios)
    assert targets["train_wps_k3_shared_over_k1"]["met"] is True
    assert targets["infer_wps_k3_shared_over_k1"]["met"] is False
    assert targets["infer_wps_k3_shared_over_k1"]["source"] == "spacy benchmark speed"
    assert targets["estep_share_k3_shared"]["met"] is True
    assert targets["estep_share_k3_separate"]["met"] is None
    assert targets["train_wps_k1_grouped_over_before"]["met"] is None  # not run
    results["k1_before"] = {"train": {"words_per_s": 100.0}}
    results["k1_grouped"] = {"train": {"words_per_s": 170.0}}
    ratios = speed.compute_ratios(results)
    assert ratios["train_wps_k1_grouped_over_before"] == pytest.approx(1.7)
    assert ratios["train_wps_k1_over_before"] == pytest.approx(2.0)
    targets = speed.check_targets(results, ratios)
    assert targets["train_wps_k1_grouped_over_before"]["met"] is True
    assert speed.variant_config("k1_grouped", ROOT / "configs" / "minilm_fast.cfg") == \
        ROOT / "configs" / "minilm.cfg"
    results["k1_grouped_frozen"] = {"train": {"words_per_s": 160.0}}
    assert speed.compute_ratios(results)["train_wps_k1_grouped_frozen_over_before"] == pytest.approx(1.6)
    # `spacy benchmark speed` against nlp.pipe, decomposed by the in-process replica of its sample
    results["k1"]["bench_sample"] = {"mean_batch_words_per_s": 594.0, "total_words_per_s": 540.0}
    ratios = speed.compute_ratios(results)
    assert ratios["bench_sample_mean_over_spacy_benchmark_k1"] == pytest.approx(594.0 / 600.0)
    assert ratios["bench_sample_total_over_pipe_k1"] == pytest.approx(1.08)
    assert ratios["bench_sample_mean_over_total_k1"] == pytest.approx(1.1)
    assert "bench_sample_total_over_pipe_k3_shared" not in ratios


def test_cli_validation(toy_corpus):
    base = ["--train", str(toy_corpus / "train.spacy"), "--dev", str(toy_corpus / "dev.spacy")]
    args = speed.parse_args(base + ["--variants", "k3_shared,k1"])
    assert args.variant_list == ["k3_shared", "k1"] and args.config.name == "minilm.cfg"
    assert args.steps == 50 and args.warmup == 3 and args.bench_batches == 30
    assert args.bench_batch_size == 0  # the pipeline's own batch size, as nlp.pipe uses
    assert speed.parse_args(base + ["--variants", "k1,k1_before"]).variant_list == ["k1", "k1_before"]
    for bad in (["--variants", "k2"], ["--bench-batches", "20"], ["--steps", "0"],
                ["--config", "nope.cfg"]):
        with pytest.raises(SystemExit):
            speed.parse_args(base + bad)
    assert speed.default_out(ROOT / "configs" / "minilm.cfg", ROOT / "corpus" / "webpage" / "train.spacy") \
        == ROOT / "benchmarks" / "results" / "speed__webpage__minilm.json"
