"""Tests for ftkit.evaluation.metrics: hand-computed known answers, all fully offline.

Offline is enforced, not assumed: a module-scoped fixture sets the HF offline
env vars and makes any socket connect raise, and one test loads every metric
in a fresh interpreter with a fresh HF_HOME / HF_MODULES_CACHE.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Cheap: ftkit.evaluation.metrics imports evaluate lazily. Submodules (which import
# evaluate, ~6 s) are imported inside tests, after the offline fixture is
# active and the background fresh-cache process has started.
from ftkit.evaluation.metrics import available_metrics, available_per_example, load_metric, metric_path, per_example

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("network access attempted in an offline test")


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket.socket, "connect_ex", _no_network)
        yield


_FRESH_CACHE_SCRIPT = r"""
import json, socket
def boom(*a, **k): raise RuntimeError("network")
socket.socket.connect = boom
from ftkit.evaluation.metrics import load_metric
out = {
    "accuracy": load_metric("accuracy").compute(predictions=["a", "b"], references=["a", "a"]),
    "macro_f1": load_metric("macro_f1").compute(predictions=["a"], references=["a"])["macro_f1"],
    "squad": load_metric("squad").compute(predictions=["The cat"], references=[["cat"]]),
    "rouge_l": load_metric("rouge_l").compute(predictions=["да"], references=[["да"]]),
    "chrf": load_metric("chrf").compute(predictions=["abc"], references=["abc"]),
    "perplexity": load_metric("perplexity").compute(nll=[1.0], num_tokens=[1]),
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def fresh_cache_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Start the fresh-interpreter offline load early (autouse) so its ~6 s of
    importing evaluate overlaps the in-process tests; checked by the last test."""
    root = tmp_path_factory.mktemp("fresh_hf")
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    env["HF_HOME"] = str(root / "hf")
    env["HF_MODULES_CACHE"] = str(root / "modules")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-c", _FRESH_CACHE_SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, root
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


_LOADED: dict[str, Any] = {}


def metric(name: str) -> Any:
    """Load once per test module (load_metric keeps inputs in memory: no cache files)."""
    if name not in _LOADED:
        _LOADED[name] = load_metric(name)
    return _LOADED[name]


# --------------------------------------------------------------------------- registry


def test_available_metrics() -> None:
    assert available_metrics() == ["accuracy", "chrf", "macro_f1", "perplexity", "rouge_l", "squad"]
    assert metric_path("squad").name == "squad.py"


def test_unknown_metric_lists_available_names() -> None:
    with pytest.raises(ValueError, match="accuracy.*squad"):
        load_metric("bleu")
    with pytest.raises(ValueError, match="squad_f1"):
        per_example("bleu", ["a"], ["a"])
    assert "_text" not in available_metrics()
    assert set(available_per_example()) == {
        "accuracy",
        "chrf",
        "rouge_l",
        "squad_exact_match",
        "squad_f1",
    }


def test_loaded_modules_have_info() -> None:
    for name in available_metrics():
        module = metric(name)
        assert module.info.description.strip()
        assert module.info.citation.strip()


# --------------------------------------------------------------------------- accuracy


def test_accuracy_known_answer() -> None:
    preds, refs = ["a", "b", "c", "a"], ["a", "b", "b", "b"]
    assert metric("accuracy").compute(predictions=preds, references=refs) == {"accuracy": 0.5}
    assert per_example("accuracy", preds, refs) == [1.0, 1.0, 0.0, 0.0]


def test_length_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        per_example("accuracy", ["a"], ["a", "b"])
    with pytest.raises(ValueError):
        per_example("squad_f1", [], [])


# --------------------------------------------------------------------------- macro F1


def test_macro_f1_never_predicted_class_and_matrix_orientation() -> None:
    refs = ["pos", "pos", "neg", "neu"]
    preds = ["pos", "neg", "neg", "neg"]
    out = metric("macro_f1").compute(predictions=preds, references=refs, labels=["pos", "neg", "neu"])
    # pos: P=1/1 R=1/2 F=2/3; neg: P=1/3 R=1/1 F=1/2; neu never predicted: F=0.
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert out["labels"] == ["pos", "neg", "neu"]
    assert out["per_class"]["pos"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert out["per_class"]["neg"] == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1})
    assert out["per_class"]["neu"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # rows = reference label, columns = predicted label
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_macro_f1_label_absent_everywhere_still_counts() -> None:
    refs, preds = ["pos", "pos", "neg", "neu"], ["pos", "neg", "neg", "neg"]
    out = metric("macro_f1").compute(predictions=preds, references=refs, labels=["pos", "neg", "neu", "other"])
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 4)
    assert out["per_class"]["other"]["support"] == 0


def test_macro_f1_default_label_order_is_sorted_union() -> None:
    out = metric("macro_f1").compute(predictions=["b", "c"], references=["b", "a"])
    assert out["labels"] == ["a", "b", "c"]
    assert out["confusion_matrix"] == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert out["macro_f1"] == pytest.approx(1 / 3)


def test_macro_f1_prediction_outside_labels_is_a_miss() -> None:
    out = metric("macro_f1").compute(predictions=["a", "garbage"], references=["a", "b"], labels=["a", "b"])
    assert out["per_class"]["b"]["recall"] == 0.0
    assert out["macro_f1"] == pytest.approx(0.5)
    assert out["confusion_matrix"] == [[1, 0], [0, 0]]


def test_macro_f1_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="not in `labels`"):
        metric("macro_f1").compute(predictions=["a"], references=["z"], labels=["a"])
    with pytest.raises(ValueError, match="duplicates"):
        metric("macro_f1").compute(predictions=["a"], references=["a"], labels=["a", "a"])


# --------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The  Quick, brown FOX!", "quick brown fox"),  # case, punctuation, article, whitespace
        ("an apple a day", "apple day"),
        ("theory of the atom", "theory of atom"),  # only whole-word articles go
        ("  \tpadded\n text ", "padded text"),
        ("A", ""),
        ("¿Qué?", "qué"),  # Unicode punctuation stripped
        ("«Paris»—France", "parisfrance"),  # like ASCII punctuation, removed without a space
        ("Cafe\u0301", "café"),  # decomposed accent == composed (NFKC)
        ("ＡＢＣ １２３", "abc 123"),  # full-width forms
        ("$5 + 3%", "5 3"),  # ASCII symbols in string.punctuation, as the official script
    ],
)
def test_squad_normalisation(raw: str, normalised: str) -> None:
    from ftkit.evaluation.metrics.squad import normalize_answer

    assert normalize_answer(raw) == normalised


def test_squad_exact_match_and_f1_known_answers() -> None:
    out = metric("squad").compute(
        predictions=["the Eiffel Tower.", "the big red dog"],
        references=[["Eiffel tower"], ["red dog barked"]],
    )
    # ex2 tokens [big, red, dog] vs [red, dog, barked]: overlap 2 -> P = R = F1 = 2/3
    assert out == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3) / 2})


def test_squad_best_over_references_and_string_reference() -> None:
    scores = per_example("squad_f1", ["red dog"], [["blue cat", "red dog barked"]])
    assert scores == pytest.approx([0.8])  # P = 1, R = 2/3
    assert metric("squad").compute(predictions=["Paris"], references=["paris"]) == {
        "exact_match": 1.0,
        "f1": 1.0,
    }


def test_squad_empty_cases() -> None:
    preds = ["", "", "The", "paris", ""]
    refs = [["paris"], [""], ["a"], [""], []]
    # empty vs non-empty -> 0; both empty after normalisation -> 1; [] means unanswerable ("")
    assert per_example("squad_exact_match", preds, refs) == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert per_example("squad_f1", preds, refs) == [0.0, 1.0, 1.0, 0.0, 1.0]


def test_squad_unicode() -> None:
    out = metric("squad").compute(
        predictions=["«Москва»", "東京 タワー"], references=[["москва"], ["東京タワー", "東京 タワー"]]
    )
    assert out == {"exact_match": 1.0, "f1": 1.0}


def test_squad_per_example_mean_equals_corpus() -> None:
    preds = ["a cat", "dog house", "x"]
    refs = [["the cat"], ["house dog", "dog"], ["y"]]
    corpus = metric("squad").compute(predictions=preds, references=refs)
    assert corpus["f1"] == pytest.approx(sum(per_example("squad_f1", preds, refs)) / 3)
    assert corpus["exact_match"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_known_answer_matches_rouge_score_on_ascii() -> None:
    from rouge_score import rouge_scorer

    pred, ref = "The cat sat on the mat.", "the cat on the mat"
    # LCS = "the cat on the mat" (5): P = 5/6, R = 1 -> F = 10/11
    out = metric("rouge_l").compute(predictions=[pred], references=[[ref]])
    assert out["rouge_l"] == pytest.approx(10 / 11)
    stock = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert out["rouge_l"] == pytest.approx(stock)


def test_rouge_l_unicode() -> None:
    from rouge_score import rouge_scorer

    # The stock tokenizer deletes non-ASCII text, scoring identical Russian 0.
    assert rouge_scorer.RougeScorer(["rougeL"]).score("привет мир", "Привет мир")["rougeL"].fmeasure == 0
    scores = per_example("rouge_l", ["Привет мир", "我爱猫", "café au lait"], ["привет мир", "我爱狗", "café noir"])
    # Russian identical; CJK per-char LCS 2/3; [café au lait] vs [café noir]: P=1/3 R=1/2 F=0.4
    assert scores == pytest.approx([1.0, 2 / 3, 0.4])


def test_unicode_tokenizer() -> None:
    from ftkit.evaluation.metrics.rouge_l import UnicodeTokenizer

    tokens = UnicodeTokenizer().tokenize("Naïve café—Straße नमस्ते 我爱 snake_case")
    assert tokens == ["naïve", "café", "straße", "नमस्ते", "我", "爱", "snake", "case"]


def test_rouge_l_several_references_takes_best() -> None:
    out = metric("rouge_l").compute(predictions=["a b c d", "x y"], references=[["x y", "a b c d"], ["x y z w", "x"]])
    # ex2: vs "x y z w" P=1 R=1/2 F=2/3; vs "x" P=1/2 R=1 F=2/3 -> 2/3
    assert out["rouge_l"] == pytest.approx((1 + 2 / 3) / 2)


# --------------------------------------------------------------------------- chrF


def test_chrf_extremes_and_hand_value() -> None:
    m = metric("chrf")
    assert m.compute(predictions=["hello world"], references=[["hello world"]]) == {"chrf": 100.0}
    assert m.compute(predictions=["abc"], references=["xyz"]) == {"chrf": 0.0}
    # char_order=1, whitespace ignored: hyp {a,b}, ref {a,b,c}: P=1, R=2/3,
    # F_beta=2 = 5PR / (4P + R) = (10/3) / (14/3) = 5/7
    out = m.compute(predictions=["a b"], references=["abc"], char_order=1)
    assert out["chrf"] == pytest.approx(100 * 5 / 7)


def test_chrf_matches_sacrebleu_and_handles_variable_reference_counts() -> None:
    from sacrebleu.metrics import CHRF

    hyps = ["the cat sat on the mat", "a quick brown fox"]
    refs = [["the cat is on the mat"], ["the quick brown fox", "a fast brown fox"]]
    streams = [["the cat is on the mat", "the quick brown fox"], [None, "a fast brown fox"]]  # None: no reference
    expected = CHRF().corpus_score(hyps, streams)  # type: ignore[arg-type]  # sacrebleu skips None, annotates str
    assert metric("chrf").compute(predictions=hyps, references=refs)["chrf"] == pytest.approx(expected.score)
    # A worse extra reference never lowers the score (best reference is kept).
    single = metric("chrf").compute(predictions=["hello world"], references=[["hello world"]])
    multi = metric("chrf").compute(predictions=["hello world"], references=[["goodbye", "hello world"]])
    assert multi == single
    sentence = per_example("chrf", hyps, refs)
    assert sentence[0] == pytest.approx(CHRF().sentence_score(hyps[0], refs[0]).score)


# --------------------------------------------------------------------------- perplexity


def test_perplexity_math() -> None:
    out = metric("perplexity").compute(nll=[2.0, 4.0], num_tokens=[2, 4])
    assert out["mean_nll"] == pytest.approx(1.0)
    assert out["perplexity"] == pytest.approx(math.e)
    assert out["num_tokens"] == 6
    # Token-weighted pooling, not a mean of per-example perplexities: 3 tokens at ln 2 each -> 2.
    out = metric("perplexity").compute(nll=[3 * math.log(2), 0.0], num_tokens=[3, 0])
    assert out["perplexity"] == pytest.approx(2.0)


def test_perplexity_edge_cases() -> None:
    from ftkit.evaluation.metrics.perplexity import aggregate

    assert aggregate([1e6], [1])["perplexity"] == math.inf
    with pytest.raises(ValueError, match="at least one scored token"):
        aggregate([0.0], [0])
    with pytest.raises(ValueError):
        aggregate([-1.0], [1])
    with pytest.raises(ValueError):
        aggregate([1.0, 2.0], [1])


# --------------------------------------------------------------------------- offline loading


def test_fresh_cache_offline_subprocess(fresh_cache_run: tuple[subprocess.Popen[str], Path]) -> None:
    """evaluate.load(<local script>) with an empty HF_HOME/HF_MODULES_CACHE, offline, no sockets."""
    proc, root = fresh_cache_run
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["accuracy"] == {"accuracy": 0.5}
    assert out["macro_f1"] == 1.0
    assert out["squad"] == {"exact_match": 1.0, "f1": 1.0}
    assert out["rouge_l"] == {"rouge_l": 1.0}
    assert out["chrf"] == {"chrf": 100.0}
    assert out["perplexity"]["perplexity"] == pytest.approx(math.e)
    # evaluate copied each script plus its relative-import helper into the fresh cache.
    squad_dirs = root / "modules" / "evaluate_modules" / "metrics" / "squad"
    assert len(list(squad_dirs.glob("*/_text.py"))) == 1
    # keep_in_memory default: no arrow buffers or lock files in $HF_HOME/metrics.
    assert not [p for p in (root / "hf").rglob("*") if p.is_file()]
