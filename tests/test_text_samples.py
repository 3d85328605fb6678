"""tests.text_samples: the synthetic reviews, their tokenisation and the tiny Keras text classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests import text_samples as ts
from tests.text_samples import (
    CLS,
    LABELS,
    NEGATIVE,
    NEUTRAL,
    PAD,
    POSITIVE,
    UNK,
    TextSample,
    make_reviews,
    tokenize,
    vocabulary,
)

# ---------------------------------------------------------------------------
# vocabulary and tokenisation
# ---------------------------------------------------------------------------


def test_vocabulary_is_stable_and_starts_with_the_special_tokens():
    vocab = vocabulary()
    assert vocab == vocabulary()
    assert vocab[:3] == [PAD, UNK, CLS] == ["[PAD]", "[UNK]", "[CLS]"]
    words = vocab[3:]
    assert words == sorted(words) and len(set(vocab)) == len(vocab)
    assert all(w and " " not in w and w == w.lower() for w in words)
    assert {"not", "but", "although", ",", "good", "terrible", "okay", "hate"} <= set(words)


def test_generated_reviews_use_only_vocabulary_words():
    known = set(vocabulary())
    texts, _ = make_reviews(600, seed=11)
    assert {w for text in texts for w in text.split()} <= known


def test_tokenize_puts_cls_first_pads_and_truncates():
    vocab = vocabulary()
    index = {t: i for i, t in enumerate(vocab)}
    ids = tokenize(["The Phone is GOOD", "zzz good", "", "good " * 40], vocab, 8)
    assert ids.dtype == np.int32 and ids.shape == (4, 8)
    assert ids[:, 0].tolist() == [2, 2, 2, 2]  # [CLS]
    assert ids[0].tolist() == [2, index["the"], index["phone"], index["is"], index["good"], 0, 0, 0]
    assert ids[1].tolist() == [2, 1, index["good"], 0, 0, 0, 0, 0]  # unknown word -> [UNK] = 1
    assert ids[2].tolist() == [2, 0, 0, 0, 0, 0, 0, 0]
    assert ids[3].tolist() == [2] + [index["good"]] * 7  # truncated to seq_len, [CLS] kept


# ---------------------------------------------------------------------------
# reviews and labels
# ---------------------------------------------------------------------------


def test_make_reviews_is_deterministic_per_seed_and_balanced():
    texts, labels = make_reviews(301, seed=5)
    again_texts, again_labels = make_reviews(301, seed=5)
    other_texts, _ = make_reviews(301, seed=6)
    assert texts == again_texts and np.array_equal(labels, again_labels)
    assert texts != other_texts
    assert labels.dtype == np.int64 and len(texts) == len(labels) == 301
    counts = np.bincount(labels, minlength=len(LABELS))
    assert counts.max() - counts.min() <= 1
    assert LABELS == ("negative", "neutral", "positive") and (NEGATIVE, NEUTRAL, POSITIVE) == (0, 1, 2)


_POSITIVE = set(ts._POSITIVE_ADJECTIVES) | set(ts._POSITIVE_VERBS)
_NEGATIVE = set(ts._NEGATIVE_ADJECTIVES) | set(ts._NEGATIVE_VERBS)
_NEGATIONS = set(ts._NEGATIONS)


def _clause_label(clause: str) -> int:
    """The labelling rules, written independently of the generator."""
    words = set(clause.split())
    assert len(words & (_POSITIVE | _NEGATIVE)) <= 1, clause
    negated = bool(words & _NEGATIONS)
    if words & _POSITIVE:
        return NEGATIVE if negated else POSITIVE  # "not good" is a complaint
    if words & _NEGATIVE:
        return NEUTRAL if negated else NEGATIVE  # "not terrible" is not praise
    return NEUTRAL  # neutral adjectives and plain facts


def _sentence_label(text: str) -> tuple[int, int | None]:
    """(label of the sentence, label of the clause a contrast overrides, or None)."""
    if " but " in text:
        first, last = text.split(" but ")
        return _clause_label(last), _clause_label(first)
    if "although " in text:
        first, last = text.split("although ", 1)[1].split(" , ", 1)
        return _clause_label(last), _clause_label(first)
    if " and " in text:
        left, right = text.split(" and ")
        assert _clause_label(left) == _clause_label(right), text
        return _clause_label(left), None
    return _clause_label(text), None


def test_labels_follow_the_rules():
    texts, labels = make_reviews(900, seed=3)
    contrasts = 0
    for text, label in zip(texts, labels, strict=True):
        expected, overridden = _sentence_label(text)
        assert expected == label, f"{text!r}: {LABELS[label]}, rules say {LABELS[expected]}"
        if overridden is not None:
            contrasts += 1
            assert overridden != label, text  # the clause the contrast overrides has another label
    assert contrasts > 200


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("the screen is great but the battery is awful", NEGATIVE),
        ("although the price is bad , i really love this phone", POSITIVE),
        ("the case is not terrible", NEUTRAL),
        ("i do not hate it", NEUTRAL),
        ("the sound was not good", NEGATIVE),
        ("i do not like the fit", NEGATIVE),
        ("the charger is very good", POSITIVE),
        ("the phone arrived on monday", NEUTRAL),
        ("honestly , the screen is okay so far", NEUTRAL),
    ],
)
def test_rule_examples(text: str, label: int):
    assert _sentence_label(text)[0] == label


def test_every_kind_of_clause_is_generated():
    texts, labels = make_reviews(900, seed=4)
    neutral = [t for t, y in zip(texts, labels, strict=True) if y == NEUTRAL and " but " not in t]
    negative = [t for t, y in zip(texts, labels, strict=True) if y == NEGATIVE and " but " not in t]
    assert any(set(t.split()) & _NEGATIONS and set(t.split()) & _NEGATIVE for t in neutral)  # "not terrible"
    assert any(set(t.split()) & _NEGATIONS and set(t.split()) & _POSITIVE for t in negative)  # "not good"
    assert any(t.startswith("although ") for t in texts) and any(" and " in t for t in texts)


# ---------------------------------------------------------------------------
# the trained classifier
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_make_text_classifier_writes_every_file(text_sample: TextSample):
    s = text_sample
    assert s.model.name == "text_classifier.keras" and s.model.is_file()
    assert (s.saved_model / "saved_model.pb").is_file()
    for path in (s.model, s.saved_model, s.calib, s.val, s.vocab, s.labels):
        assert Path(path).is_absolute() and Path(path).parent == s.model.parent
    assert s.vocab.read_text().splitlines() == vocabulary()
    assert s.labels.read_text().splitlines() == list(LABELS)
    calib = np.load(s.calib)
    assert calib.dtype == np.int32 and calib.shape == (ts.CALIBRATION_SENTENCES, 32)
    with np.load(s.val) as val:
        x, y = val["x"], val["y"]
    assert x.dtype == np.int32 and x.shape == (ts.VAL_SENTENCES, 32)
    assert y.dtype == np.int64 and y.shape == (ts.VAL_SENTENCES,)
    assert np.all(x[:, 0] == 2) and np.all(calib[:, 0] == 2)
    assert x.max() < len(vocabulary()) and not np.any(x == 1)  # no [UNK] in generated data
    assert np.array_equal(y, make_reviews(ts.VAL_SENTENCES, seed=1_000_003)[1])


@pytest.mark.slow
def test_make_text_classifier_learns_the_rules(text_sample: TextSample):
    # chance is 33 %; word order decides many labels ("X but Y"), so the encoder must use positions
    assert text_sample.val_accuracy > 90, text_sample.val_accuracy
    assert text_sample.train_seconds > 0
