"""The zero-shot leakage check: a test image or caption planted in the pretraining shards is found and named."""

import io
import json

import numpy as np
import pytest
from PIL import Image
from support.shards import build_test_shards

from beit3_core.data.shard_format import iter_webdataset_shard
from beit3_core.train.streams import read_shard_refs
from evaluation.leakage import LeakageError, check_zeroshot_split, normalise_caption
from evaluation.zeroshot import read_zeroshot_split


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_test_shards(tmp_path_factory.mktemp("shards"), num_shards=2, per_kind=6)


def _first_pair(shards):
    refs, _ = read_shard_refs(shards)
    return next(s for s in iter_webdataset_shard(refs[1].tar) if s["kind"] == "pair")


def _flickr(root, images):
    """Karpathy test split of (PIL image, [captions])."""
    (root / "flickr30k-images").mkdir(parents=True)
    entries = []
    for imgid, (image, captions) in enumerate(images):
        filename = f"{1000000 + imgid}.jpg"
        image.save(root / "flickr30k-images" / filename, quality=90)
        sentences = [{"raw": c, "tokens": c.split(), "imgid": imgid, "sentid": j} for j, c in enumerate(captions)]
        entries.append({"filename": filename, "imgid": imgid, "split": "test", "sentids": [], "sentences": sentences})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": entries}))
    return read_zeroshot_split("flickr30k_zeroshot", root)


def _novel_image():
    checker = (np.indices((48, 72)).sum(0) // 6 % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([checker, 255 - checker, checker // 2], -1))


def test_planted_image_and_caption_are_named(tmp_path, shards):
    pair = _first_pair(shards)
    with Image.open(io.BytesIO(pair["image_bytes"])) as stored:
        # A benchmark copy is another encoding of the picture: smaller, re-compressed.
        planted = stored.convert("RGB").resize((stored.width * 3 // 4, stored.height * 3 // 4), Image.BICUBIC)
    split = _flickr(tmp_path, [(_novel_image(), ["a dog runs on grass"]), (planted, ["  STRIPES! "])])
    with pytest.raises(LeakageError) as error:
        check_zeroshot_split("flickr30k_zeroshot", split, [shards])
    message = str(error.value)
    assert "2 test records are in the pretraining shards" in message
    assert f"image flickr30k-images/1000001.jpg = {pair['key']} (shard fixture-001)" in message
    assert "caption flickr30k-images/1000001.jpg: '  STRIPES! ' = fixture/pair-" in message
    assert "1000000.jpg" not in message


def test_clean_split_passes(tmp_path, shards):
    split = _flickr(tmp_path, [(_novel_image(), ["a dog runs on grass"]), (_novel_image().rotate(90), ["a cat"])])
    assert check_zeroshot_split("flickr30k_zeroshot", split, [shards]) == {"images_checked": 2, "captions_checked": 2}


def test_caption_normalisation():
    assert normalise_caption("  An Emoji of\tSMILING face. ") == normalise_caption("an emoji of smiling face")
    assert normalise_caption("ﬁsh") == "fish"  # NFKC folds the ligature
