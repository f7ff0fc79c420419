"""Zero-shot retrieval (units 11-12): chunked scoring, no training, 224 px, and the errors for bad input."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from support.model_inputs import SMALL

from beit3_core.checkpoint import save_checkpoint
from beit3_core.config import get_config
from beit3_core.itc import BEiT3ForITC
from beit3_core.mdm import BEiT3ForMDM
from beit3_core.text_tokenizer import XLMRTokenizer, train_sentencepiece
from evaluation.metrics.retrieval import retrieval_recall, retrieval_recall_from_features
from evaluation.tasks.data import text_segment, vl_image
from evaluation.zeroshot import embed_split, evaluate_zeroshot, read_zeroshot_split

CAPTIONS = ["a dog runs on grass", "a man rides a bike", "two birds on a wire", "a red car parked", "a cat sleeps"]


def _write_flickr(root, splits=("train", "test", "test", "test"), captions=None):
    images = []
    (root / "flickr30k-images").mkdir(parents=True, exist_ok=True)
    for imgid, split in enumerate(splits):
        filename = f"{1000092795 + imgid}.jpg"
        Image.new("RGB", (40, 30), (50 * imgid, 90, 200 - 40 * imgid)).save(root / "flickr30k-images" / filename)
        raws = captions[imgid] if captions else [CAPTIONS[(imgid + j) % 5] for j in range(2)]
        sentences = [{"raw": r, "tokens": r.split(), "imgid": imgid, "sentid": j} for j, r in enumerate(raws)]
        images.append({"filename": filename, "imgid": imgid, "split": split, "sentids": [], "sentences": sentences})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    model = train_sentencepiece(CAPTIONS * 5, tmp_path_factory.mktemp("spm") / "z", 40, hard_vocab_limit=False)
    return XLMRTokenizer(model)


@pytest.fixture(scope="module")
def itc_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = BEiT3ForITC(get_config("beit3_tiny", **SMALL))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "itc.safetensors"), model


def _brute_force_recall_at_1(scores, text_to_image):
    """TR@1 and IR@1 by loops over the full matrix (independent of the chunked evaluator)."""
    num_images, num_texts = scores.shape
    tr = sum(text_to_image[int(scores[i].argmax())] == i for i in range(num_images)) / num_images
    ir = sum(int(scores[:, t].argmax()) == text_to_image[t] for t in range(num_texts)) / num_texts
    return 100 * tr, 100 * ir


def test_chunked_scores_equal_the_full_matrix():
    torch.manual_seed(3)
    image = F.normalize(torch.randn(7, 16), dim=-1)
    text = F.normalize(torch.randn(20, 16), dim=-1)
    text_to_image = torch.tensor([i % 7 for i in range(20)])
    chunked = retrieval_recall_from_features(image, text, text_to_image, chunk_size=3)
    full = retrieval_recall(image @ text.T, text_to_image, chunk_size=1024)
    assert chunked == pytest.approx(full)
    tr1, ir1 = _brute_force_recall_at_1(image @ text.T, text_to_image.tolist())
    assert chunked["tr_r1"] == pytest.approx(tr1) and chunked["ir_r1"] == pytest.approx(ir1)


def test_zeroshot_runs_no_training_step_at_224_px(tmp_path, tokenizer, itc_checkpoint, monkeypatch):
    root = _write_flickr(tmp_path / "f30k")
    path, trained = itc_checkpoint

    def no_optimizer(*args, **kwargs):
        raise AssertionError("zero-shot evaluation created an optimizer")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_optimizer)
    seen = {}

    def hook(model):
        seen["model"] = model
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}

    metrics = evaluate_zeroshot(
        "flickr30k_zeroshot", path, root, tokenizer, batch_size=2, chunk_size=2, text_len=16, model_hook=hook
    )
    split = read_zeroshot_split("flickr30k_zeroshot", root)
    features = embed_split(seen["model"], split, tokenizer, batch_size=2, text_len=16)
    model = seen["model"]
    assert model.config.img_size == 224 and metrics["img_size"] == 224 and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, seen["before"][key]), key
    assert all(p.grad is None for p in model.parameters())
    assert metrics["num_images"] == 3 and metrics["num_texts"] == 6
    # Reference: the same weights, each test image at 224 px and each caption embedded one at a time.
    with torch.no_grad():
        images = torch.cat([model.encode_image(vl_image(root / i.image_path, 224, False)[None]) for i in split.images])
        texts = [text_segment(tokenizer, c, 16) for c in split.captions]
        texts = torch.cat([model.encode_text(ids[None], pad[None]) for ids, pad in texts])
    torch.testing.assert_close(features[0], images, atol=1e-5, rtol=0)
    torch.testing.assert_close(features[1], texts, atol=1e-5, rtol=0)
    assert set(metrics) >= {"tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10", "average_score"}


def test_checkpoint_without_projection_heads_is_refused(tmp_path, tokenizer):
    root = _write_flickr(tmp_path / "f30k")
    mdm = save_checkpoint(BEiT3ForMDM(get_config("beit3_tiny", **SMALL)), tmp_path / "mdm.safetensors")
    with pytest.raises(ValueError, match="holds no ITC projection heads.*vision_head.weight.*logit_scale"):
        evaluate_zeroshot("flickr30k_zeroshot", mdm, root, tokenizer)


def test_karpathy_file_without_test_split_is_named(tmp_path, tokenizer, itc_checkpoint):
    root = _write_flickr(tmp_path / "f30k", splits=("train", "val"))
    with pytest.raises(ValueError, match="dataset_flickr30k.json has no image in the Karpathy test split"):
        evaluate_zeroshot("flickr30k_zeroshot", itc_checkpoint[0], root, tokenizer)


def test_caption_that_tokenises_to_nothing_is_named(tmp_path, tokenizer, itc_checkpoint):
    captions = [["a dog runs"], ["a cat sleeps", "   "]]
    root = _write_flickr(tmp_path / "f30k", splits=("test", "test"), captions=captions)
    with pytest.raises(ValueError, match=r"caption '   ' of flickr30k-images/1000092796.jpg tokenises to nothing"):
        evaluate_zeroshot("flickr30k_zeroshot", itc_checkpoint[0], root, tokenizer, text_len=16)
