"""Caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) through pycocoevalcap, plus the NoCaps domain breakdown.

Metrics: Papineni et al. 2002 (BLEU), Denkowski & Lavie 2014 (METEOR 1.5), Lin 2004 (ROUGE-L), Vedantam et al.
2015 (CIDEr, arXiv 1411.5726); NoCaps: Agrawal et al. 2019 (arXiv 1812.08658). Checked against pycocoevalcap 1.2
`eval.py` (`COCOEvalCap`), whose tokenizer and scorers are used here unchanged: the Stanford PTB tokenizer (Java,
lower-cases, drops punctuation tokens), corpus BLEU with the "closest" reference length, METEOR with
`-l en -norm`, ROUGE-L with beta 1.2, and CIDEr-D whose idf comes from the references of the evaluated set (so
scores depend on the whole set, and a single image always scores CIDEr 0).

Scores are on pycocoevalcap's scale (fractions; CIDEr around 1.3 for a good COCO model): papers print them
x100. SPICE is left out: pycocoevalcap's SPICE downloads the Stanford CoreNLP 3.6.0 models on first use, which
cannot happen offline, so the stock `COCOEvalCap.evaluate()` would crash; every result carries `SPICE_NOTE`.
"""

import atexit
import functools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from evaluation.metrics.ids import check_same_ids, sample_ids

METRIC_NAMES = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L", "CIDEr")
SPICE_NOTE = (
    "SPICE not computed: pycocoevalcap's SPICE downloads Stanford CoreNLP 3.6.0 models on first use, "
    "which is not possible offline; use the EvalAI server for official SPICE."
)
NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")

# Tokenized captions keyed like pycocoevalcap's scorers expect: id -> list of strings.
_Tokenized = dict[Hashable, list[str]]


def caption_scores(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str]) -> dict[str, Any]:
    """Scores one predicted caption per image against its reference captions.

    Args:
        references: Image id -> reference captions (raw text, at least one per image).
        predictions: Image id -> predicted caption (raw text); ids must equal those of `references`.

    Returns:
        The seven `METRIC_NAMES` on pycocoevalcap's scale, `num_images` and `note` (why SPICE is absent).

    Raises:
        ValueError: If the id sets differ or an image has no reference caption.
    """
    refs, hyps = _tokenize_pair(references, predictions)
    return {**_score_all(refs, hyps), "num_images": len(hyps), "note": SPICE_NOTE}


def nocaps_scores(
    references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str], domains: Mapping[Hashable, str]
) -> dict[str, Any]:
    """NoCaps-style local evaluation: all metrics overall, and CIDEr per domain.

    Each domain's CIDEr re-runs the scorer on that domain's images only, so its idf comes from that subset, like
    the per-domain numbers of the NoCaps evaluation server. Domains without images are left out.

    Args:
        references: Image id -> reference captions.
        predictions: Image id -> predicted caption.
        domains: Image id -> one of `NOCAPS_DOMAINS`, for every reference image.

    Returns:
        What `caption_scores` returns, plus `domains`: domain -> {`CIDEr`, `num_images`}.

    Raises:
        ValueError: If ids differ or a domain is missing or unknown.
    """
    missing = set(references) - set(domains)
    if missing:
        raise ValueError(f"{len(missing)} image ids have no domain (e.g. {sample_ids(missing)})")
    unknown = {domain for domain in domains.values() if domain not in NOCAPS_DOMAINS}
    if unknown:
        raise ValueError(f"unknown NoCaps domains {sorted(unknown)}; expected {list(NOCAPS_DOMAINS)}")
    refs, hyps = _tokenize_pair(references, predictions)
    result: dict[str, Any] = {**_score_all(refs, hyps), "num_images": len(hyps), "note": SPICE_NOTE}
    result["domains"] = {}
    for domain in NOCAPS_DOMAINS:
        ids = [image_id for image_id in hyps if domains[image_id] == domain]
        if ids:
            score, _ = Cider().compute_score({i: refs[i] for i in ids}, {i: hyps[i] for i in ids})
            result["domains"][domain] = {"CIDEr": float(score), "num_images": len(ids)}
    return result


def _tokenize_pair(
    references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str]
) -> tuple[_Tokenized, _Tokenized]:
    """Validates ids and PTB-tokenizes references and predictions in one Java call."""
    check_same_ids(references, predictions, what="image ids")
    if not references:
        raise ValueError("no images to score")
    empty = [image_id for image_id, captions in references.items() if not captions]
    if empty:
        raise ValueError(f"{len(empty)} images have no reference caption (e.g. {sample_ids(empty)})")
    # One JVM launch instead of two: -preserveLines tokenizes every caption on its own line independently, so
    # sharing the call with tagged keys gives the same tokens as COCOEvalCap's two separate calls.
    batch = {("ref", i): [{"caption": _one_line(c)} for c in captions] for i, captions in references.items()}
    batch.update({("hyp", i): [{"caption": _one_line(caption)}] for i, caption in predictions.items()})
    tokens = PTBTokenizer().tokenize(batch)
    refs = {i: tokens[("ref", i)] for i in references}
    hyps = {i: tokens[("hyp", i)] for i in references}
    return refs, hyps


def _one_line(caption: str) -> str:
    """Joins every kind of line break with a space.

    The tokenizer maps output lines back to captions by position and only replaces "\\n" itself; a "\\r",
    form feed or Unicode line separator inside a caption would make Java emit an extra line and silently shift
    every later caption onto the wrong image.
    """
    return " ".join(caption.splitlines())


def _score_all(refs: _Tokenized, hyps: _Tokenized) -> dict[str, float]:
    """Runs the explicit scorer list of `COCOEvalCap` minus SPICE on tokenized captions."""
    bleu, _ = Bleu(4).compute_score(refs, hyps, verbose=0)  # verbose=0: Bleu prints to stdout otherwise
    scores = {f"BLEU_{n}": float(value) for n, value in enumerate(bleu, start=1)}
    scores["METEOR"] = _meteor_score(refs, hyps)
    scores["ROUGE_L"] = float(Rouge().compute_score(refs, hyps)[0])
    scores["CIDEr"] = float(Cider().compute_score(refs, hyps)[0])
    return scores


def _meteor_score(refs: _Tokenized, hyps: _Tokenized) -> float:
    scorer = _shared_meteor()
    try:
        score, _ = scorer.compute_score(refs, hyps)
    except Exception:
        # A failed exchange leaves the Java process's line protocol out of step and the wrapper's lock held (it
        # has no try/finally, and its __del__ would then block): stop that process and start afresh next time.
        _stop_meteor(scorer)
        if scorer.lock.locked():
            scorer.lock.release()
        _shared_meteor.cache_clear()
        raise
    return float(score)


@functools.cache
def _shared_meteor() -> Meteor:
    """One METEOR Java process per Python process.

    Starting it costs ~6-10 s (JVM plus the paraphrase table) while scoring a few thousand captions takes well
    under a second, so per-epoch evaluation and test suites reuse it.
    """
    scorer = Meteor()
    atexit.register(_stop_meteor, scorer)
    return scorer


def _stop_meteor(scorer: Meteor) -> None:
    process = scorer.meteor_p
    if process.poll() is None:
        process.stdin.close()
        process.kill()
        process.wait()
