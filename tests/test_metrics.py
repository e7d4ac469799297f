"""Each metric against small cases whose values are worked out by hand in the comments."""

from __future__ import annotations

import pytest

from llamo.metrics import (
    bleu_meteor,
    ensure_wordnet,
    exact_match,
    llm_tokenizer,
    molecule_metrics,
    name_metrics,
    parse_number,
    regression_metrics,
    rouge,
    text_metrics,
    word_tokenize,
)


REFERENCE = "the cat sat on my mat"
PREDICTION = "the cat sat on a mat"


def test_bleu_by_hand():
    # hypothesis n-grams found in the reference (no repeated words, so clipping never applies):
    #   1-grams: the cat sat on mat = 5 of 6          2-grams: the-cat cat-sat sat-on = 3 of 5
    #   3-grams: the-cat-sat cat-sat-on = 2 of 4      4-grams: the-cat-sat-on = 1 of 3
    # both have 6 tokens -> brevity penalty 1
    # BLEU-2 = (5/6 * 3/5) ** (1/2) = 0.5 ** 0.5 = 0.707107
    # BLEU-4 = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** (1/4) = 0.537285
    scores = bleu_meteor([PREDICTION], [REFERENCE])
    assert scores["bleu2"] == pytest.approx(70.7107, abs=1e-3)
    assert scores["bleu4"] == pytest.approx(53.7285, abs=1e-3)


def test_bleu_is_a_corpus_score_not_a_mean_of_sentences():
    # pair 1: identical 4 tokens; pair 2: "x y" vs "a b", nothing matches.
    # corpus 1-grams: (4 + 0) / (4 + 2) = 4/6; 2-grams: (3 + 0) / (3 + 1) = 3/4; lengths 6 = 6 -> BP 1
    # BLEU-2 = (4/6 * 3/4) ** 0.5 = 0.5 ** 0.5 = 0.707107 (a mean of sentence scores would be (1 + 0) / 2 = 0.5)
    scores = bleu_meteor(["a b c d", "x y"], ["a b c d", "a b"])
    assert scores["bleu2"] == pytest.approx(70.7107, abs=1e-3)


def test_bleu_brevity_penalty():
    # "the cat" vs "the cat sat": 1-grams 2/2, 2-grams 1/1, but 2 tokens for 3 -> BP = exp(1 - 3/2) = 0.606531
    assert bleu_meteor(["the cat"], ["the cat sat"])["bleu2"] == pytest.approx(60.6531, abs=1e-3)


def test_meteor_by_hand():
    ensure_wordnet()
    # exact matches the cat sat on mat: m = 5 (a / my match neither by stem nor by WordNet synonym)
    # P = 5/6, R = 5/6 -> Fmean = P*R / (0.9*P + 0.1*R) = 5/6
    # chunks: (the cat sat on) and (mat) = 2 -> penalty = 0.5 * (2/5) ** 3 = 0.032
    # METEOR = (1 - 0.032) * 5/6 = 0.806667
    assert bleu_meteor([PREDICTION], [REFERENCE])["meteor"] == pytest.approx(80.6667, abs=1e-3)


def test_meteor_uses_wordnet_synonyms_offline():
    # "auto" and "car" share a WordNet synset (car.n.01): m = 2 of 2, one chunk
    # Fmean = 1, penalty = 0.5 * (1/2) ** 3 = 0.0625 -> METEOR = 0.9375; without WordNet it would be
    # m = 1: Fmean = 1/2, penalty 0.5 * 1 = 0.5 -> 0.25. (NLTK looks synonyms up after Porter stemming, so
    # "automobile", stemmed to "automobil", would not match: a quirk of NLTK's METEOR, kept for comparability.)
    assert bleu_meteor(["red auto"], ["red car"])["meteor"] == pytest.approx(93.75, abs=1e-3)


def test_rouge_by_hand():
    # ROUGE-1: 5 common words of 6 and 6 -> F1 = 5/6 = 0.833333
    # ROUGE-2: 3 common bigrams (the-cat cat-sat sat-on) of 5 and 5 -> 3/5 = 0.6
    # ROUGE-L: longest common subsequence the cat sat on mat = 5 -> 5/6
    scores = rouge([PREDICTION], [REFERENCE])
    assert scores == pytest.approx({"rouge1": 83.3333, "rouge2": 60.0, "rougeL": 83.3333}, abs=1e-3)


def test_word_tokenizer_is_lowercase_words_and_punctuation():
    assert word_tokenize("The 2-methyl-propanol, (R)-form.") == [
        "the",
        "2",
        "-",
        "methyl",
        "-",
        "propanol",
        ",",
        "(",
        "r",
        ")-",
        "form",
        ".",
    ]


class CharacterTokenizer:
    """A stand-in for a model tokenizer: one piece per character."""

    def tokenize(self, text):
        return list(text)


def test_llm_tokenization_uses_the_model_pieces():
    # characters of "abce" vs "abcd": 1-grams a b c = 3 of 4; 2-grams ab bc = 2 of 3 -> BLEU-2 = (3/4 * 2/3) ** 0.5 = 0.707107
    # with word tokens the answer is one word that differs: BLEU-2 = 0
    scores = text_metrics(["abce"], ["abcd"], tokenizer=CharacterTokenizer())
    assert scores["bleu2_llm"] == pytest.approx(70.7107, abs=1e-3)
    assert scores["bleu2_word"] == 0
    assert llm_tokenizer(CharacterTokenizer(), max_tokens=3)("abcdef") == ["a", "b", "c"]


def test_name_metrics_exact_match():
    # 2 of 3 equal after ignoring case, whitespace and a final full stop
    scores = name_metrics(["Ethanol.", "propan-1-ol", "methanol"], ["ethanol", "propan-1-ol", "propan-2-ol"])
    assert scores["exact_match"] == pytest.approx(2 / 3)
    assert exact_match(" Ethanol. ", "ethanol") and not exact_match("ethanol", "methanol")


def test_regression_counts_unparsable_answers():
    # parsable: -0.25 vs -0.25 (0), 0.1 vs 0.12 (0.02), 0.3 vs 0.1 (0.2) -> MAE = 0.22 / 3 = 0.073333; "n/a" counted
    scores = regression_metrics(["-0.25", "about 0.1 Hartree", "n/a", "0.3"], ["-0.2500", "0.1200", "0.3000", "0.1000"])
    expected = {
        "mae": 0.073333, "parsed": 3, "unparsable": 1, "unparsable_share": 0.25, "invalid_references": 0, "distinct_answer_share": 1.0,
    }  # fmt: skip
    assert scores == pytest.approx(expected, abs=1e-6)
    assert regression_metrics(["0.2", "0.2", "0.2", "0.3"], ["0.1"] * 4)["distinct_answer_share"] == 0.5
    assert regression_metrics(["none"], ["1.0"]) == {
        "mae": None, "parsed": 0, "unparsable": 1, "unparsable_share": 1.0, "invalid_references": 0, "distinct_answer_share": 1.0,
    }  # fmt: skip
    assert parse_number("1e-3 Ha") == 0.001 and parse_number("inf") is None


def test_a_reference_without_a_finite_number_is_counted_not_fatal():
    # issue 18 problem 5: one `inf` reference made the evaluation exit 1 after generating everything
    scores = regression_metrics(["1", "2", "0.5"], ["unknown", "inf", "0.25"])
    assert scores == {
        "mae": 0.25,
        "parsed": 1,
        "unparsable": 0,
        "unparsable_share": 0.0,
        "invalid_references": 2,
        "distinct_answer_share": 1.0,
    }
    assert regression_metrics(["1"], ["nan"]) == {
        "mae": None, "parsed": 0, "unparsable": 0, "unparsable_share": None, "invalid_references": 1, "distinct_answer_share": 1.0,
    }  # fmt: skip


def test_molecule_metrics_by_hand():
    predictions = ["OCC", "C1CC(", "CCN", "CO"]
    references = ["CCO", "CCO", "CCO", "CN"]
    scores = molecule_metrics(predictions, references)
    # valid: OCC, CCN, CO (C1CC( has an unclosed ring and branch) -> 3/4
    assert (scores["validity"], scores["valid"], scores["invalid"]) == (0.75, 3, 1)
    # only OCC is the reference molecule (ethanol written from the other end) -> 1/4
    assert scores["exact_match_smiles"] == scores["exact_match_inchi"] == 0.25
    # Morgan r=2, counted by hand (redundant environments dropped, as RDKit does):
    #   ethanol CH3 CH2 OH at radius 0, the same three at radius 1 (C-C, C-C-O, C-O) = 6 features
    #   CCN vs CCO share CH3 and CH2 at radius 0 and CH3-CH2 at radius 1: 3 of 6 + 6 - 3 = 9 -> 1/3
    #   CN vs CO share CH3 at radius 0 of 3 + 3 - 1 = 5 -> 1/5
    # mean over the valid answers: (1 + 1/3 + 1/5) / 3 = 0.511111
    assert scores["morgan_similarity"] == pytest.approx(0.511111, abs=1e-6)
    # MACCS keys: CCO {82 CH3-CH2, 109 C-O-H?, 114 CH3-CH2-Q, 139 OH, 153 QCH2A, 155 CH2-Q, 157 C-O, 160 CH3, 164 O} (9),
    #   CCN {82, 84 NH2, 100 N-CH2, 114, 151 NH, 153, 155, 158 C-N, 160, 161 N} (10): shared 82 114 153 155 160 = 5
    #   -> 5 / (9 + 10 - 5) = 5/14; CO {93 Q-CH3, 139, 157, 160, 164}, CN {84, 93, 151, 158, 160, 161}: shared 93 160
    #   -> 2 / (5 + 6 - 2) = 2/9; mean (1 + 5/14 + 2/9) / 3 = 0.526455
    assert scores["maccs_similarity"] == pytest.approx(0.526455, abs=1e-6)
    # RDKit path fingerprint, 2 bits per path: CCO paths C-C, C-O, C-C-O; CCN paths C-C, C-N, C-C-N
    #   -> 1 shared path of 5 = 2 / 10 bits = 1/5; CO vs CN share no path -> 0; mean (1 + 1/5 + 0) / 3 = 0.4
    assert scores["rdk_similarity"] == pytest.approx(0.4, abs=1e-6)
    # edit distances: OCC->CCO 2 (two substitutions), C1CC(->CCO 3 (drop 1, C->O, drop "("), CCN->CCO 1, CO->CN 1
    # mean 7/4 = 1.75
    assert scores["levenshtein"] == 1.75


def test_molecule_metrics_all_invalid_and_bad_reference():
    scores = molecule_metrics(["not a molecule", ""], ["CCO", "C"])
    assert scores["validity"] == 0 and scores["morgan_similarity"] is None and scores["invalid"] == 2
    with pytest.raises(ValueError, match="not a valid SMILES"):
        molecule_metrics(["CCO"], ["C1CC("])


def test_mismatched_or_empty_inputs_raise():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        text_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        regression_metrics([], [])


def test_wordnet_is_copied_with_lf_line_endings_when_nltk_lacks_it(tmp_path, monkeypatch):
    import nltk

    def not_found(resource, *args, **kwargs):
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", not_found)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    assert ensure_wordnet(tmp_path) == tmp_path.resolve()
    noun_index = (tmp_path / "corpora" / "wordnet" / "index.noun").read_bytes()
    assert b"\r\n" not in noun_index and b"\nautomobile n " in noun_index
    assert nltk.data.path[0] == str(tmp_path.resolve())
    assert ensure_wordnet(tmp_path) == tmp_path.resolve()  # a second call reuses the copy


@pytest.mark.parametrize(
    "answer, value",
    [
        ("-0.25", -0.25),
        ("The molecular weight is 180.16 g/mol.", 180.16),
        ("TPSA: 63.60 Å^2", 63.6),
        ("\u22120.5 eV", -0.5),  # Unicode minus
        ("HOMO -0.25 Ha, LUMO 0.1 Ha", 0.1),  # several numbers: the final one, the answer ends with it
        # garbage or numbers that are parts of other things: unparsable (the first-number rule read 1, 9, 2, 1 and 1)
        ("CC(=O)Oc1ccccc1C(=O)O", None),
        ("C9H8O4", None),
        ("propan-2-ol", None),
        ("1 2 3 C1CC", None),
        ("it has 3 rings and 2 double bonds", None),
    ],
)
def test_parse_number_reads_the_sole_or_final_number_only(answer, value):
    assert parse_number(answer) == value


def test_random_text_does_not_count_as_parsed():
    # the first-number rule scored 3 of these 3 gibberish answers as "parsed"
    scores = regression_metrics(["c1ccc2 ring 4 of 5 the", "CC1=CC(N)C1 the", "[NH3+]C(C)2 is is"], ["0.1", "0.2", "0.3"])
    assert scores == {
        "mae": None,
        "parsed": 0,
        "unparsable": 3,
        "unparsable_share": 1.0,
        "invalid_references": 0,
        "distinct_answer_share": 1.0,
    }


def test_wordnet_copy_repairs_a_partial_target_and_leaves_no_staging_folder(tmp_path, monkeypatch):
    # issue 18 problem 11: each failed attempt leaked a staging folder, and a partial copy was never repaired
    import pathlib

    import nltk

    from llamo import metrics

    monkeypatch.setattr(nltk.data, "find", lambda resource, *args, **kwargs: (_ for _ in ()).throw(LookupError(resource)))
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    partial = tmp_path / "corpora" / "wordnet"
    partial.mkdir(parents=True)
    (partial / "data.noun").write_text("cut off")  # a killed copy: some files, no completion marker
    original_write = pathlib.Path.write_bytes
    calls = []

    def failing_write(self, data):
        calls.append(self.name)
        if len(calls) == 3:
            raise OSError("disk full")
        return original_write(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", failing_write)
    with pytest.raises(OSError, match="disk full"):
        ensure_wordnet(tmp_path)
    assert sorted(path.name for path in (tmp_path / "corpora").iterdir()) == ["wordnet"]  # no staging folder left
    monkeypatch.setattr(pathlib.Path, "write_bytes", original_write)
    ensure_wordnet(tmp_path)
    assert sorted(path.name for path in (tmp_path / "corpora").iterdir()) == ["wordnet"]
    assert (partial / metrics.WORDNET_COMPLETE).is_file() and (partial / "data.noun").stat().st_size > 1_000_000
