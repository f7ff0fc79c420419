"""Tests for COCO / NoCaps captioning: Karpathy and NoCaps parsing, causal mask, masking, loss, beam search."""

import json
import math

import pytest
import torch
from PIL import Image
from support.model_inputs import SMALL

from beit3_core.text_tokenizer import XLMRTokenizer, train_sentencepiece
from evaluation.tasks import get_task
from evaluation.tasks.beam_search import beam_search
from evaluation.tasks.captioning import captioning_attention_mask, captioning_loss, mask_caption
from evaluation.tasks.karpathy import coco_caption_ground_truth

COCO = get_task("coco_captioning")
NOCAPS = get_task("nocaps")
DIM, VOCAB = SMALL["embed_dim"], SMALL["vocab_size"]
CAPTIONS = ["a man riding a wave", "two dogs play in the grass", "a plate of rice", "a red bus on a street"]
SPLITS = ["train", "train", "restval", "val", "val", "test", "test"]
OBJECTS = ["cat", "tree", "boat", "kite", "horse", "cake"]
DOMAINS = ["in-domain", "in-domain", "near-domain", "near-domain", "out-domain", "out-domain"]


def _image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 32), (37 * seed % 255, 90, 13 * seed % 255)).save(path)


def _nocaps_caption(image: int, index: int) -> str:
    # A word per image keeps CIDEr's idf non-degenerate.
    return f"{CAPTIONS[index % 4]} and a {OBJECTS[image]}"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    images, sentid = [], 0
    for imgid, split in enumerate(SPLITS):
        folder = "train2014" if split in ("train", "restval") else "val2014"
        cocoid = 1000 + imgid
        filename = f"COCO_{folder}_{cocoid:012d}.jpg"
        _image(root / folder / filename, imgid)
        count = 6 if imgid == 0 else 5
        raws = [CAPTIONS[(imgid + j) % 4] for j in range(count)]
        sentences = [{"raw": r, "tokens": r.split(), "imgid": imgid, "sentid": sentid + j} for j, r in enumerate(raws)]
        images.append(
            {
                "filepath": folder,
                "filename": filename,
                "imgid": imgid,
                "cocoid": cocoid,
                "split": split,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
        sentid += count
    (root / "dataset_coco.json").write_text(json.dumps({"dataset": "coco", "images": images}))
    for split, num in (("val", 6), ("test", 2)):
        entries = []
        for i in range(num):
            oid = f"{i:016x}"
            entry = {"id": i, "open_images_id": oid, "height": 32, "width": 40, "coco_url": "", "license": 1}
            entry |= {"file_name": f"{oid}.jpg", "date_captured": ""}
            if split == "val":
                entry["domain"] = DOMAINS[i]
            entries.append(entry)
            _image(root / split / f"{oid}.jpg", i + 20)
        data = {"licenses": [], "info": {}, "images": entries}
        if split == "val":
            data["annotations"] = [
                {"image_id": i, "id": 10 * i + j, "caption": _nocaps_caption(i, j)}
                for i in range(num)
                for j in range(10)
            ]
        name = "nocaps_val_4500_captions.json" if split == "val" else "nocaps_test_image_info.json"
        (root / name).write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    model = train_sentencepiece(
        CAPTIONS * 5 + [_nocaps_caption(i, 0) for i in range(6)],
        tmp_path_factory.mktemp("spm") / "c",
        40,
        hard_vocab_limit=False,
    )
    return XLMRTokenizer(model)


def test_karpathy_splits(root, tokenizer):
    train = COCO.dataset("train", root, tokenizer, 32)
    assert len(train) == 6 + 5 + 5  # one item per caption of train + restval
    val, test = COCO.dataset("val", root, tokenizer, 32), COCO.dataset("test", root, tokenizer, 32)
    assert len(val) == len(test) == 2 and sorted(val.references) == [1003, 1004]
    assert val.items[0][0].image_path == "val2014/COCO_val2014_000000001003.jpg"
    assert "text" not in val[0] and val[0]["image"].shape == (3, 32, 32)
    ground_truth = coco_caption_ground_truth(test.images)
    assert [i["id"] for i in ground_truth["images"]] == [1005, 1006] and len(ground_truth["annotations"]) == 10


def test_nocaps_splits(root, tokenizer):
    val = NOCAPS.dataset("val", root, tokenizer, 32)
    assert len(val) == 6 and all(len(c) == 10 for c in val.references.values())
    assert sorted(val.domains.values()) == sorted(DOMAINS)
    assert val.items[0][0].image_path == "val/0000000000000000.jpg"
    assert len(NOCAPS.dataset("test", root, tokenizer, 32)) == 2
    assert len(NOCAPS.dataset("train", root, tokenizer, 32)) == 16  # NoCaps trains on COCO


def test_attention_mask_is_causal_over_text():
    blocked = captioning_attention_mask(num_image_tokens=3, text_len=4)
    allowed = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(blocked, ~allowed)


def test_mask_caption_counts_and_replacements():
    torch.manual_seed(0)
    mask_id, vocab, num_tokens = 41, 42, 9
    replaced = {"mask": 0, "kept": 0, "random": 0}
    for _ in range(300):
        original = torch.tensor([0, 10, 11, 12, 13, 14, 15, 16, 2, 1, 1])
        ids = original.clone()
        masked = mask_caption(ids, num_tokens, 0.7, mask_id, vocab)
        assert masked.sum() == min(max(int(num_tokens * 0.7 + 0.5), 1), num_tokens - 1) == 6
        assert not masked[0] and not masked[num_tokens:].any()  # never <s>, never padding
        assert torch.equal(ids[~masked], original[~masked])
        new, old = ids[masked], original[masked]
        replaced["mask"] += int((new == mask_id).sum())
        replaced["kept"] += int(((new == old) & (new != mask_id)).sum())
        replaced["random"] += int(((new != old) & (new != mask_id)).sum())
        assert (((new >= 3) & (new < vocab)) | (new == old)).all()  # </s> may be chosen and kept
    total = sum(replaced.values())
    assert 0.75 < replaced["mask"] / total < 0.85 and 0.05 < replaced["kept"] / total < 0.15


def test_captioning_loss_is_label_smoothed_kl_with_drop_worst():
    torch.manual_seed(0)
    logits, labels, eps = torch.randn(10, 7), torch.randint(0, 7, (10,)), 0.1
    target = torch.full((10, 7), eps / 6).scatter(1, labels[:, None], 1 - eps)
    per_token = (target * (target.log() - logits.log_softmax(-1))).sum(-1)
    torch.testing.assert_close(captioning_loss(logits, labels, eps), per_token.mean())
    torch.testing.assert_close(captioning_loss(logits, labels, eps, 0.2), per_token.sort().values[:8].mean())


def test_head_keys_match_release():
    model = COCO.build_model("beit3_tiny", **SMALL)
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("beit3.")}
    assert head == {"mlm_head.weight": (VOCAB, DIM), "mlm_head.bias": (VOCAB,)}
    assert "beit3.encoder.layer_norm.B.weight" in model.state_dict()


@pytest.mark.parametrize("step", [0, 12001])
def test_loss_backward(root, tokenizer, step):
    torch.manual_seed(0)
    model = COCO.build_model("beit3_tiny", **SMALL)
    train = COCO.dataset("train", root, tokenizer, 32)
    batch = COCO.collate([train[i] for i in range(4)])
    loss, metrics = COCO.loss(model, batch, step=step)
    loss.backward()
    assert torch.isfinite(loss) and model.mlm_head.weight.grad is not None


def _chain_scorer(vocab, preferred):
    """Toy next-token log-probs: after token t prefer preferred[t] (else EOS), all else uniform-ish."""

    def next_logprobs(prefix):
        logits = torch.zeros(prefix.shape[0], vocab)
        for row, last in enumerate(prefix[:, -1].tolist()):
            logits[row, preferred.get(last, 2)] = 5.0
            logits[row] += 0.01 * torch.arange(vocab)  # break ties deterministically
        return logits.log_softmax(-1)

    return next_logprobs


def test_beam_search_follows_the_best_chain():
    out = beam_search(_chain_scorer(10, {0: 5, 5: 6}), 2, bos_id=0, eos_id=2, pad_id=1, max_len=8)
    assert out == [[0, 5, 6, 2], [0, 5, 6, 2]]
    # No EOS preferred: the output stops at max_len.
    loop = beam_search(_chain_scorer(10, {0: 5, 5: 6, 6: 5}), 1, bos_id=0, eos_id=2, pad_id=1, max_len=5)
    assert loop[0][0] == 0 and len(loop[0]) == 5


def test_beam_search_beats_greedy():
    vocab = 10

    def next_logprobs(prefix):
        out = torch.full((prefix.shape[0], vocab), -20.0)
        for row, ids in enumerate(prefix.tolist()):
            if len(ids) == 1:
                out[row, 4], out[row, 5] = math.log(0.55), math.log(0.45)  # greedy takes 4
            elif ids[-1] == 5:
                out[row, 2] = 0.0  # 5 is surely followed by EOS
            else:
                out[row, :] = -math.log(vocab)  # after 4 everything is uniform
        return out

    assert beam_search(next_logprobs, 1, bos_id=0, eos_id=2, pad_id=1, max_len=6) == [[0, 5, 2]]


def test_model_beam_search_is_deterministic_and_terminates(root, tokenizer):
    torch.manual_seed(0)
    model = COCO.build_model("beit3_tiny", **SMALL).eval()
    val = COCO.dataset("val", root, tokenizer, 32)
    batch = COCO.collate([val[i] for i in range(2)])
    first = COCO.predict(model, batch, tokenizer=tokenizer, max_len=6)
    second = COCO.predict(model, batch, tokenizer=tokenizer, max_len=6)
    assert first == second and [r["image_id"] for r in first] == [1003, 1004]
    for record in first:
        ids = record["token_ids"]
        assert ids[0] == 0 and (ids[-1] == 2 or len(ids) == 6) and 2 not in ids[:-1]
        assert max(ids) < tokenizer.vocab_size
    captions = COCO.captions(first, val)
    assert set(captions) == {1003, 1004} and all(isinstance(c, str) for c in captions.values())


def test_submission_format(root, tokenizer, tmp_path):
    val = NOCAPS.dataset("val", root, tokenizer, 32)
    records = [{"image_id": i, "token_ids": tokenizer.encode(CAPTIONS[i % 4])} for i in range(6)]
    path = NOCAPS.write_submission(records, tmp_path / "caps.json", val)
    assert json.loads(path.read_text())[1] == {"image_id": 1, "caption": CAPTIONS[1]}


@pytest.mark.slow
def test_nocaps_evaluate_per_domain(root, tokenizer):
    val = NOCAPS.dataset("val", root, tokenizer, 32)
    records = [{"image_id": i, "token_ids": tokenizer.encode(_nocaps_caption(i, 1))} for i in range(6)]
    result = NOCAPS.evaluate(records, val)
    assert set(result["domains"]) == set(DOMAINS) and result["CIDEr"] > 0
    assert all(d["CIDEr"] > 0 for d in result["domains"].values())
