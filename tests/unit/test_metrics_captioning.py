"""Caption metrics through the real pycocoevalcap (Java PTB tokenizer and METEOR) and the NoCaps breakdown."""

import pytest

from evaluation.metrics.captioning import METRIC_NAMES, SPICE_NOTE, caption_scores, nocaps_scores

# Spec Appendix A: three images x five references, and three hypotheses.
APPENDIX_A_REFERENCES = {
    1: [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave in the ocean.",
        "A person on a surfboard riding a wave.",
        "Man surfing on a big blue wave.",
        "A surfer is catching a wave at the beach.",
    ],
    2: [
        "Two dogs playing with a frisbee in the grass.",
        "A pair of dogs run after a red frisbee.",
        "Dogs are playing in a grassy field.",
        "Two brown dogs chase a flying disc.",
        "Two dogs fight over a frisbee on a lawn.",
    ],
    3: [
        "A plate of food with broccoli and rice.",
        "Rice, broccoli and chicken on a white plate.",
        "A healthy meal served on a dish.",
        "A white plate topped with rice and vegetables.",
        "Broccoli and rice sit on a plate.",
    ],
}
APPENDIX_A_HYPOTHESES = {
    1: "A man riding a wave on a surfboard.",
    2: "Two dogs playing with a frisbee.",
    3: "A plate of rice and broccoli.",
}
# pycocoevalcap 1.2 values of Appendix A (PTB-tokenized); METEOR is a Java float computation, hence 1e-4.
APPENDIX_A_EXPECTED = {
    "BLEU_1": 0.9048,
    "BLEU_2": 0.8499,
    "BLEU_3": 0.7758,
    "BLEU_4": 0.6928,
    "METEOR": 0.407516502238917,
    "ROUGE_L": 0.7335526985778417,
    "CIDEr": 2.3277397933506574,
}


@pytest.mark.slow
def test_appendix_a_values() -> None:
    scores = caption_scores(APPENDIX_A_REFERENCES, APPENDIX_A_HYPOTHESES)
    for name, expected in APPENDIX_A_EXPECTED.items():
        assert scores[name] == pytest.approx(expected, abs=1e-4), name
    assert set(METRIC_NAMES) <= set(scores)
    assert "SPICE" not in scores and scores["note"] == SPICE_NOTE
    assert scores["num_images"] == 3


@pytest.mark.slow
def test_first_reference_as_hypothesis_and_all_wrong() -> None:
    perfect = caption_scores(APPENDIX_A_REFERENCES, {i: refs[0] for i, refs in APPENDIX_A_REFERENCES.items()})
    assert perfect["CIDEr"] == pytest.approx(3.1275, abs=1e-4)  # spec section 13
    assert perfect["BLEU_4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["ROUGE_L"] == pytest.approx(1.0)
    wrong = caption_scores(APPENDIX_A_REFERENCES, dict.fromkeys(APPENDIX_A_REFERENCES, "xylophone quartz zebu"))
    assert wrong["CIDEr"] == 0.0 and wrong["ROUGE_L"] == 0.0 and wrong["METEOR"] == 0.0
    assert wrong["BLEU_1"] < 1e-6


@pytest.mark.slow
def test_line_breaks_inside_captions_do_not_shift_images() -> None:
    # The Java tokenizer splits on "\r" and Unicode line separators; unguarded, image 2 would get image 1's tail.
    broken = {1: "A man riding\ra wave on a surfboard.", 2: "Two dogs\u2028playing with a frisbee.", 3: "A plate."}
    clean = {1: "A man riding a wave on a surfboard.", 2: "Two dogs playing with a frisbee.", 3: "A plate."}
    assert caption_scores(APPENDIX_A_REFERENCES, broken) == caption_scores(APPENDIX_A_REFERENCES, clean)


def test_mismatched_ids_are_named() -> None:
    predictions = {1: "a man", 2: "two dogs", 99: "a cat"}
    with pytest.raises(ValueError, match=r"1 image ids without a prediction \(e.g. 3\).*\(e.g. 99\)"):
        caption_scores(APPENDIX_A_REFERENCES, predictions)


def test_image_without_references_is_rejected() -> None:
    with pytest.raises(ValueError, match="no reference caption"):
        caption_scores({1: ["a dog"], 2: []}, {1: "a dog", 2: "a cat"})


def _nocaps_references() -> tuple[dict[int, list[str]], dict[int, str]]:
    """Six images, two per domain, ten references each (the NoCaps layout)."""
    scenes = {
        0: ("in-domain", "dog", "on a green lawn"),
        1: ("in-domain", "cat", "on a wooden table"),
        2: ("near-domain", "horse", "in a sandy field"),
        3: ("near-domain", "bicycle", "next to a brick wall"),
        4: ("out-domain", "accordion", "on a stage"),
        5: ("out-domain", "jellyfish", "in dark water"),
    }
    subjects = ("a", "one", "the", "a small", "a large")
    verbs = ("sits", "rests")
    references = {
        image_id: [f"{det} {thing} {verb} {place}." for det in subjects for verb in verbs]
        for image_id, (_, thing, place) in scenes.items()
    }
    domains = {image_id: domain for image_id, (domain, _, _) in scenes.items()}
    return references, domains


@pytest.mark.slow
def test_nocaps_domain_breakdown() -> None:
    references, domains = _nocaps_references()
    predictions = {
        0: "a dog sits on a green lawn.",  # in-domain: exact references
        1: "a cat sits on a wooden table.",
        2: "a horse stands in a field.",  # near-domain: partly right
        3: "a bicycle leans on a wall.",
        4: "purple mountain sunrise",  # out-domain: nothing shared with the references
        5: "purple mountain sunrise",
    }
    scores = nocaps_scores(references, predictions, domains)
    per_domain = scores["domains"]
    assert set(per_domain) == {"in-domain", "near-domain", "out-domain"}
    assert all(entry["num_images"] == 2 for entry in per_domain.values())
    assert per_domain["in-domain"]["CIDEr"] > per_domain["near-domain"]["CIDEr"] > 0.0
    assert per_domain["out-domain"]["CIDEr"] == 0.0
    assert scores["num_images"] == 6 and set(METRIC_NAMES) <= set(scores)
    # Each domain is scored on its own subset (idf from that subset), i.e. like a separate evaluation.
    near = [2, 3]
    alone = caption_scores({i: references[i] for i in near}, {i: predictions[i] for i in near})
    assert per_domain["near-domain"]["CIDEr"] == pytest.approx(alone["CIDEr"])
    assert scores["CIDEr"] == pytest.approx(caption_scores(references, predictions)["CIDEr"])


def test_nocaps_rejects_unknown_or_missing_domains() -> None:
    references, domains = _nocaps_references()
    predictions = dict.fromkeys(references, "a thing")
    with pytest.raises(ValueError, match="unknown NoCaps domains"):
        nocaps_scores(references, predictions, {**domains, 0: "indomain"})
    with pytest.raises(ValueError, match="have no domain"):
        nocaps_scores(references, predictions, {i: d for i, d in domains.items() if i != 5})
