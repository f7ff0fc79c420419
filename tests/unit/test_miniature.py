"""Tests for the miniature benchmarks: built from a generated demo layout (and the real one when present),
deterministic and idempotent, and read back by the task adapters."""

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from beit3_core.text_tokenizer import XLMRTokenizer, train_sentencepiece
from evaluation.miniature import build_miniature_benchmarks, dominant_colour
from evaluation.tasks import TASKS, get_task

FASHION_CLASSES = ["bag", "coat", "dress", "sandal", "shirt", "trouser"]
NOUNS = ["frog", "ostrich", "hen", "heron", "lark", "duck", "crow", "apple", "tree", "boat", "kite", "cake"]
REAL_DEMO = Path(__file__).resolve().parents[2] / "data" / "demo"
SIZES = dict(
    num_caption_images=24, num_test_images=4, num_nocaps_images=10, images_per_class=5, num_nlvr2_sets=(6, 3, 3)
)


def _png(color, mode="RGB", size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _fake_demo(root: Path) -> Path:
    (root / "tuxpaint").mkdir(parents=True)
    for shard in range(2):
        with tarfile.open(root / "tuxpaint" / f"{shard:05d}.tar", "w") as tar:
            for index in range(20):
                key = f"{shard:05d}{index:04d}"
                noun = NOUNS[(shard * 20 + index) % len(NOUNS)]
                article = "An" if noun[0] in "aeiou" else "A"
                caption = f"{article} {noun}." if index % 7 else f"Tux and a {noun} - two friends!"
                meta = {
                    "key": key,
                    "caption": caption,
                    "stamp": f"{('animals', 'food')[index % 2]}/{noun}-{shard}-{index}",
                }
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                _add(tar, f"{key}.png", _png((index * 9, shard * 90, 40, 200), mode="RGBA"))
                _add(tar, f"{key}.txt", caption.encode())
    (root / "emoji" / "images").mkdir(parents=True)
    rows = []
    for i in range(30):
        name = f"images/{0x1F300 + i:05x}.png"
        (root / "emoji" / name).write_bytes(_png((i * 8, 50, 90)))
        rows.append({"image": name, "caption": f"symbol {NOUNS[i % len(NOUNS)]}", "codepoint": f"U+{0x1F300 + i:04X}"})
    (root / "emoji" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for c, name in enumerate(FASHION_CLASSES):
        (root / "fashion_mnist" / name).mkdir(parents=True)
        for k in range(7):
            (root / "fashion_mnist" / name / f"train_{c * 100 + k:05d}.png").write_bytes(_png((c * 40, k * 30, 0)))
    return root


def _digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != "miniature_manifest.json")
    return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return _fake_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def built(demo, tmp_path_factory):
    return build_miniature_benchmarks(demo, tmp_path_factory.mktemp("mini"), seed=3, **SIZES)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    sentences = [f"is this a {n}? what is shown in the picture? an emoji of symbol {n}." for n in NOUNS]
    model = train_sentencepiece(sentences * 3, tmp_path_factory.mktemp("spm") / "m", 60, hard_vocab_limit=False)
    return XLMRTokenizer(model)


def _jpeg(draw) -> bytes:
    image = Image.new("RGB", (48, 48), "white")
    draw(image)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_dominant_colour_ignores_the_canvas_and_outlines():
    def outlined(fill):
        def draw(image):
            image.paste((20, 20, 20), (8, 8, 40, 40))  # a dark outline 3 px wide around the fill
            image.paste(fill, (11, 11, 37, 37))

        return draw

    assert dominant_colour(_jpeg(outlined((210, 40, 35)))) == "red"
    assert dominant_colour(_jpeg(outlined((45, 95, 205)))) == "blue"
    # Dark shapes with little colour (letters, tools) are black; a blank picture is white.
    assert dominant_colour(_jpeg(lambda image: image.paste((15, 15, 15), (4, 4, 44, 44)))) == "black"
    assert dominant_colour(_jpeg(lambda image: None)) == "white"


def test_vqa_answers_come_from_a_closed_set(built):
    root = built["out_root"] / "vqav2"
    by_type = {}
    for subtype in ("train2014", "val2014"):
        annotations = json.loads((root / f"v2_mscoco_{subtype}_annotations.json").read_text())["annotations"]
        for a in annotations:
            by_type.setdefault(a["question_type"], set()).add(a["multiple_choice_answer"])
    # The fake stamps are "animals/..." and "food/..." pictures.
    assert by_type["what kind"] == {"animal", "food"} and by_type["is this"] == {"yes", "no"}
    assert by_type["what color"] and by_type["what color"] <= {
        "red",
        "orange",
        "yellow",
        "green",
        "blue",
        "purple",
        "pink",
        "brown",
        "black",
        "gray",
        "white",
    }


def test_vqa_answers_are_right_for_their_pictures(built):
    root = built["out_root"] / "vqav2"
    coco = json.loads((built["out_root"] / "coco" / "dataset_coco.json").read_text())["images"]
    kind_of = {image["cocoid"]: image["stamp"].split("/")[0] for image in coco}
    answer = {"animals": "animal", "food": "food"}
    phrase = {"animals": "Is this an animal?", "food": "Is this food?"}
    seen = {"what kind": 0, "is this": 0, "what color": 0}
    for subtype in ("train2014", "val2014"):
        questions = json.loads((root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").read_text())["questions"]
        text = {q["question_id"]: q["question"] for q in questions}
        annotations = json.loads((root / f"v2_mscoco_{subtype}_annotations.json").read_text())["annotations"]
        for a in annotations:
            kind, given = kind_of[a["image_id"]], a["multiple_choice_answer"]
            if a["question_type"] == "what kind":
                assert given == answer[kind], a
            elif a["question_type"] == "is this":
                asked = next(k for k, q in phrase.items() if q == text[a["question_id"]])
                assert given == ("yes" if asked == kind else "no"), (a, text[a["question_id"]])
            else:  # the colour of the very JPEG the VQA images folder holds
                jpeg = (root / subtype / f"COCO_{subtype}_{a['image_id']:012d}.jpg").read_bytes()
                assert given == dominant_colour(jpeg), a
            assert {x["answer"] for x in a["answers"]} == {given}
            seen[a["question_type"]] += 1
    assert min(seen.values()) > 0 and seen["what kind"] == seen["is this"] == seen["what color"]


def test_nlvr2_labels_follow_the_kinds_of_the_pictures(built):
    kind_of = {
        "bag": "bag",
        "coat": "top",
        "shirt": "top",
        "dress": "dress",
        "sandal": "shoe",
        "trouser": "pair of trousers",
    }
    checked = 0
    for split in ("train", "dev", "test1"):
        for line in (built["out_root"] / "nlvr2" / "nlvr2" / "data" / f"{split}.json").read_text().splitlines():
            row = json.loads(line)
            # Each fake Fashion-MNIST file is coloured (40 c, 30 k, 0) for class c: the pictures written for the
            # pair must be of the classes its urls name, in the same order.
            stem = row["identifier"].rsplit("-", 1)[0]
            folder = f"images/train/{row['directory']}" if split == "train" else split
            for side, index in (("left", 0), ("right", 1)):
                with Image.open(built["out_root"] / "nlvr2" / folder / f"{stem}-img{index}.png") as image:
                    drawn = FASHION_CLASSES[image.convert("RGB").getpixel((0, 0))[0] // 40]
                assert row[f"{side}_url"] == f"fashion_mnist/{drawn}", row
            left, right = (kind_of[row[f"{side}_url"].split("/")[1]] for side in ("left", "right"))
            sentence, shoes = row["sentence"], (left == "shoe", right == "shoe")
            truth = {
                "The left image shows a shoe.": shoes[0],
                "The right image shows a shoe.": shoes[1],
                "Both images show a shoe.": all(shoes),
                "Neither image shows a shoe.": not any(shoes),
            }[sentence]
            assert row["label"] == str(truth), row
            checked += 1
    assert checked == 2 * sum(SIZES["num_nlvr2_sets"])


def test_official_files_and_markers(built):
    root = built["out_root"]
    # The dense tasks' miniatures have their own builders (evaluation.miniature_dense, evaluation.miniature_coco).
    assert built["built"] and set(built["tasks"]) == set(TASKS) - {"ade20k", "coco_detection"}
    coco = json.loads((root / "coco" / "dataset_coco.json").read_text())
    assert {i["split"] for i in coco["images"]} == {"train", "restval", "val", "test"}
    first = coco["images"][0]
    assert (root / "coco" / first["filepath"] / first["filename"]).is_file()
    assert first["filename"] == f"COCO_{first['filepath']}_{first['cocoid']:012d}.jpg"
    nocaps = json.loads((root / "coco" / "nocaps_val_4500_captions.json").read_text())
    assert nocaps["info"]["synthetic"] is True
    assert {i["domain"] for i in nocaps["images"]} <= {"in-domain", "near-domain", "out-domain"}
    questions = json.loads((root / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json").read_text())
    annotations = json.loads((root / "vqav2" / "v2_mscoco_train2014_annotations.json").read_text())
    assert questions["template_generated"] is True and annotations["template_generated"] is True
    assert all(len(a["answers"]) == 10 for a in annotations["annotations"])
    lines = (root / "nlvr2" / "nlvr2" / "data" / "dev.json").read_text().splitlines()
    assert all(
        json.loads(line)["template_generated"] and json.loads(line)["label"] in ("True", "False") for line in lines
    )
    assert sorted(p.name for p in (root / "imagenet" / "train").iterdir()) == sorted(
        p.name for p in (root / "imagenet" / "val").iterdir()
    )


def test_deterministic_and_idempotent(demo, built, tmp_path):
    root = built["out_root"]
    before = _digest(root)
    again = build_miniature_benchmarks(demo, root, seed=3, **SIZES)
    assert not again["built"] and _digest(root) == before
    assert again["tasks"]["vqav2"]["options"] == built["tasks"]["vqav2"]["options"]
    elsewhere = build_miniature_benchmarks(demo, tmp_path / "other", seed=3, **SIZES)
    assert _digest(elsewhere["out_root"]) == before
    reseeded = build_miniature_benchmarks(demo, tmp_path / "other", seed=4, **SIZES)
    assert reseeded["built"] and _digest(reseeded["out_root"]) != before


def test_nlvr2_test_images_are_not_training_images(built):
    root = built["out_root"] / "nlvr2"
    # Every fake Fashion-MNIST file has its own colour, so equal bytes mean the same source file.
    test = {p.read_bytes() for p in (root / "test1").glob("*.png")}
    train = {p.read_bytes() for p in (root / "images" / "train").rglob("*.png")}
    dev = {p.read_bytes() for p in (root / "dev").glob("*.png")}
    assert test and train and dev and not test & (train | dev)


def _with_held_out_emoji(demo: Path, tmp_path: Path, captions: list[str]) -> Path:
    """A copy of the fake corpus with `heldout/emoji`: one distinct picture per caption."""
    demo_copy = tmp_path / "demo"
    shutil.copytree(demo, demo_copy)
    held = demo_copy / "heldout" / "emoji"
    (held / "images").mkdir(parents=True)
    rows = []
    for i, caption in enumerate(captions):
        (held / "images" / f"{0x1F400 + i:05x}.png").write_bytes(_png((200, i * 15, 10)))
        rows.append({"image": f"images/{0x1F400 + i:05x}.png", "caption": caption})
    (held / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return demo_copy


def test_test_split_takes_the_held_out_items_there_are(demo, tmp_path):
    demo_copy = _with_held_out_emoji(demo, tmp_path, [f"held symbol {i}" for i in range(3)])  # no corpus caption
    sizes = SIZES | {"num_test_images": 5}
    result = build_miniature_benchmarks(demo_copy, tmp_path / "mini", seed=3, **sizes)
    flickr = json.loads((result["out_root"] / "flickr30k" / "dataset_flickr30k.json").read_text())
    test = [i for i in flickr["images"] if i["split"] == "test"]
    # 5 test positions asked for, 3 held-out emoji: the test split is those 3, the rest comes from the corpus.
    assert flickr["info"]["test_held_out"] is True
    assert sorted(i["sentences"][0]["raw"] for i in test) == [f"held symbol {i}" for i in range(3)]
    # Every corpus emoji is in the file (30 + 3 > the 24 positions asked for).
    assert len(flickr["images"]) == 33 and result["tasks"]["flickr30k_retrieval"]["counts"]["val"] == 2
    # The COCO-style file has no held-out stamps: its 5 test images come from the corpus.
    coco = json.loads((result["out_root"] / "coco" / "dataset_coco.json").read_text())
    assert coco["info"]["test_held_out"] is False and sum(i["split"] == "test" for i in coco["images"]) == 5


def test_nocaps_takes_the_held_out_emoji_the_flickr_test_leaves(demo, tmp_path):
    # 4 for the Flickr-style test split, 12 left over for 10 NoCaps images.
    demo_copy = _with_held_out_emoji(demo, tmp_path, [f"held symbol {i}" for i in range(16)])
    result = build_miniature_benchmarks(demo_copy, tmp_path / "mini", seed=3, **SIZES)
    root = result["out_root"]
    flickr = json.loads((root / "flickr30k" / "dataset_flickr30k.json").read_text())
    flickr_test = {i["sentences"][0]["raw"] for i in flickr["images"] if i["split"] == "test"}
    val = json.loads((root / "coco" / "nocaps_val_4500_captions.json").read_text())
    test = json.loads((root / "coco" / "nocaps_test_image_info.json").read_text())
    captions = {a["caption"] for a in val["annotations"]}
    assert val["info"]["held_out"] is True and len(val["images"]) + len(test["images"]) == 10
    assert captions <= {f"held symbol {i}" for i in range(16)} and not captions & flickr_test
    corpus = {p.read_bytes() for p in (demo_copy / "emoji" / "images").iterdir()}
    nocaps_images = [(root / "coco" / "val" / i["file_name"]).read_bytes() for i in val["images"]]
    assert len(set(nocaps_images)) == len(nocaps_images) == 8
    assert not {_jpeg_of(image) for image in corpus} & set(nocaps_images)

    # Fewer spare held-out emoji than asked for: NoCaps takes those there are.
    (tmp_path / "few").mkdir()
    few = _with_held_out_emoji(demo, tmp_path / "few", [f"held symbol {i}" for i in range(7)])
    few_root = build_miniature_benchmarks(few, tmp_path / "mini3", seed=3, **SIZES)["out_root"]
    few_val = json.loads((few_root / "coco" / "nocaps_val_4500_captions.json").read_text())
    few_test = json.loads((few_root / "coco" / "nocaps_test_image_info.json").read_text())
    assert few_val["info"]["held_out"] is True and len(few_val["images"]) + len(few_test["images"]) == 3

    # Without spare held-out emoji the NoCaps files come from corpus stamps, and say so.
    fallback = build_miniature_benchmarks(demo, tmp_path / "mini2", seed=3, **SIZES)["out_root"]
    info = json.loads((fallback / "coco" / "nocaps_val_4500_captions.json").read_text())["info"]
    assert info["held_out"] is False and "pretraining corpus" in info["description"]


def _with_held_out_stamps(demo: Path, tmp_path: Path, stamps: list[tuple[str, bytes]], folder="nocaps") -> Path:
    """A copy of the fake corpus with `heldout/<folder>`: one stamp per (caption, png)."""
    demo_copy = tmp_path / "demo"
    shutil.copytree(demo, demo_copy)
    (demo_copy / "heldout" / folder).mkdir(parents=True)
    with tarfile.open(demo_copy / "heldout" / folder / "00000.tar", "w") as tar:
        for index, (caption, png) in enumerate(stamps):
            key = f"00000{index:04d}"
            meta = {"key": key, "caption": caption, "stamp": f"animals/held-{index}"}
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            _add(tar, f"{key}.png", png)
            _add(tar, f"{key}.txt", caption.encode())
    return demo_copy


def test_nocaps_takes_the_held_out_stamps_with_domains_by_word_novelty(demo, tmp_path):
    known = ["A frog.", "An apple and a kite.", "A quokka.", "A frog and a quokka.", "Two unheard-of wombats."]
    stamps = [(caption, _png((17 * i, 200, 255 - 30 * i), size=(36, 44))) for i, caption in enumerate(known)]
    # A corpus stamp's picture again under a new caption: not new to the pretraining, so left out.
    with tarfile.open(demo / "tuxpaint" / "00000.tar") as tar:
        corpus_png = tar.extractfile("000000003.png").read()
    demo_copy = _with_held_out_stamps(demo, tmp_path, [*stamps, ("A brand new heron.", corpus_png)])
    root = build_miniature_benchmarks(demo_copy, tmp_path / "mini", seed=3, **SIZES)["out_root"]
    val = json.loads((root / "coco" / "nocaps_val_4500_captions.json").read_text())
    test = json.loads((root / "coco" / "nocaps_test_image_info.json").read_text())
    assert val["info"]["held_out"] is True and "held-out Tux Paint stamps" in val["info"]["description"]
    assert len(val["images"]) == 4 and len(test["images"]) == 1  # 5 new pictures, 4/5 val
    captions = {a["image_id"]: a["caption"] for a in val["annotations"]}
    assert "A brand new heron." not in captions.values()
    # The domains from the definition: words (articles and conjunctions aside) the COCO-style training captions use.
    coco = json.loads((root / "coco" / "dataset_coco.json").read_text())
    train_words = {
        w for i in coco["images"] if i["split"] in ("train", "restval") for s in i["sentences"] for w in s["tokens"]
    }
    assert {"frog", "apple", "kite"} <= train_words and not {"quokka", "unheard", "wombats"} & train_words
    expected = {
        "A frog.": "in-domain",
        "An apple and a kite.": "in-domain",
        "A quokka.": "out-domain",
        "A frog and a quokka.": "near-domain",
        "Two unheard-of wombats.": "out-domain",
    }
    assert all(image["domain"] == expected[captions[image["id"]]] for image in val["images"])
    held_images = {(root / "coco" / "val" / i["file_name"]).read_bytes() for i in val["images"]}
    assert held_images <= {_jpeg_of(png) for _, png in stamps}


def test_nocaps_takes_the_held_out_stamps_the_coco_test_leaves(demo, tmp_path):
    # Held-out stamps (new pictures): three with captions the corpus lacks, four sharing a corpus caption, one
    # repeating a corpus picture. The COCO-style test split takes two of the first kind (zero-shot retrieval needs
    # new captions); NoCaps needs new pictures only and takes the five left.
    new_captions = ["A quokka.", "A wombat.", "A numbat."]
    shared = ["A frog.", "A heron.", "A boat.", "A frog."]
    stamps = [(c, _png((11 * i, 250 - 20 * i, 90), size=(38, 42))) for i, c in enumerate(new_captions + shared)]
    with tarfile.open(demo / "tuxpaint" / "00000.tar") as tar:
        corpus_png = tar.extractfile("000000003.png").read()
    demo_copy = _with_held_out_stamps(demo, tmp_path, [*stamps, ("A zebu.", corpus_png)], folder="tuxpaint")
    result = build_miniature_benchmarks(demo_copy, tmp_path / "mini", seed=3, **(SIZES | {"num_test_images": 2}))
    root = result["out_root"]
    coco = json.loads((root / "coco" / "dataset_coco.json").read_text())
    coco_test = [i for i in coco["images"] if i["split"] == "test"]
    assert coco["info"]["test_held_out"] is True and len(coco_test) == 2
    assert {i["sentences"][0]["raw"] for i in coco_test} < set(new_captions)
    val = json.loads((root / "coco" / "nocaps_val_4500_captions.json").read_text())
    test = json.loads((root / "coco" / "nocaps_test_image_info.json").read_text())
    assert val["info"]["held_out"] is True and val["info"]["description"].endswith("held-out Tux Paint stamps")
    assert len(val["images"]) == 4 and len(test["images"]) == 1
    nocaps_images = {(root / "coco" / "val" / i["file_name"]).read_bytes() for i in val["images"]}
    nocaps_images |= {(root / "coco" / "test" / i["file_name"]).read_bytes() for i in test["images"]}
    coco_test_images = {(root / "coco" / "val2014" / i["filename"]).read_bytes() for i in coco_test}
    assert len(nocaps_images) == 5 and nocaps_images <= {_jpeg_of(png) for _, png in stamps}
    assert not nocaps_images & coco_test_images and _jpeg_of(corpus_png) not in nocaps_images
    # In name order (held-0..7): the one new caption the test split left, then held-3..6 with the shared captions;
    # every fifth goes to test, so val holds three of the shared ones.
    assert [a["caption"] in shared for a in val["annotations"]].count(True) == 3

    # With spare held-out emoji too, NoCaps takes the stamps first and fills up with the emoji.
    with_emoji = _with_held_out_emoji(demo_copy, tmp_path / "emoji", [f"held symbol {i}" for i in range(12)])
    root = build_miniature_benchmarks(with_emoji, tmp_path / "mini2", seed=3, **(SIZES | {"num_test_images": 2}))[
        "out_root"
    ]
    val = json.loads((root / "coco" / "nocaps_val_4500_captions.json").read_text())
    test = json.loads((root / "coco" / "nocaps_test_image_info.json").read_text())
    assert val["info"]["description"].endswith("held-out Tux Paint stamps and emoji")
    assert len(val["images"]) + len(test["images"]) == 10
    # 5 stamps + the first 5 of the 10 spare emoji; emoji file names sort first and every fifth goes to test, so
    # both kinds are in both splits (the last fifth in name order would have put two stamps in test).
    captions = [a["caption"] for a in val["annotations"]]
    assert sum(c.startswith("held symbol") for c in captions) == 4 and sum(c.startswith("A ") for c in captions) == 4


def _jpeg_of(png: bytes) -> bytes:
    from evaluation.miniature import _jpeg

    return _jpeg(png)


def test_flickr_test_split_prefers_captions_of_known_words(demo, tmp_path):
    captions = ["quite unknown thing", "symbol zebra", "symbol frog hen"]  # no, half, all words in the corpus
    demo_copy = _with_held_out_emoji(demo, tmp_path, captions)
    result = build_miniature_benchmarks(demo_copy, tmp_path / "mini", seed=3, **(SIZES | {"num_test_images": 2}))
    flickr = json.loads((result["out_root"] / "flickr30k" / "dataset_flickr30k.json").read_text())
    test = [i["sentences"][0]["raw"] for i in flickr["images"] if i["split"] == "test"]
    assert test == ["symbol frog hen", "symbol zebra"]


def _read_back(tasks: dict, tokenizer) -> dict[str, int]:
    sizes = {}
    splits = {"imagenet": ("train", "val"), "nlvr2": ("train", "val", "test")}
    for name, entry in tasks.items():
        task = get_task(name)
        for split in splits.get(name, ("train", "val", "test") if name != "vqav2" else ("train", "val")):
            dataset = task.dataset(split, entry["root"], tokenizer, 32, **entry["options"])
            assert len(dataset) > 0, (name, split)
            batch = task.collate([dataset[0], dataset[len(dataset) - 1]])
            assert batch["image"].shape == (2, 3, 32, 32) and torch.isfinite(batch["image"]).all()
            sizes[f"{name}/{split}"] = len(dataset)
    return sizes


def test_task_adapters_read_the_miniature(built, tokenizer):
    sizes = _read_back(built["tasks"], tokenizer)
    assert sizes["nlvr2/train"] == 12 and sizes["coco_retrieval/test"] == 4
    vqa = get_task("vqav2").dataset(
        "val", built["tasks"]["vqav2"]["root"], tokenizer, 32, **built["tasks"]["vqav2"]["options"]
    )
    assert vqa.answers and "yes" in vqa.answers and "no" in vqa.answers


@pytest.mark.skipif(
    not (REAL_DEMO / "demo_manifest.json").is_file(), reason="data/demo not built (flows.cli demo-data)"
)
def test_real_demo_corpus(tmp_path, tokenizer):
    result = build_miniature_benchmarks(REAL_DEMO, tmp_path / "mini", seed=0)
    counts = {name: entry["counts"] for name, entry in result["tasks"].items()}
    assert counts["coco_captioning"]["train"] >= 100 and counts["nlvr2"]["train"] == 600
    # The demo corpus holds enough held-out emoji for a 200-image test split, and held-out stamps with new
    # pictures and new captions for nearly one (196 with tuxpaint-stamps-default 2022.06.04).
    assert counts["flickr30k_retrieval"]["test"] == 200 and 180 <= counts["coco_retrieval"]["test"] <= 200
    # NoCaps takes what the two test splits leave over (63 stamps + 90 emoji), all new to the pretraining.
    assert counts["nocaps"]["val"] + counts["nocaps"]["test"] >= 120
    nocaps = json.loads((result["out_root"] / "coco" / "nocaps_val_4500_captions.json").read_text())
    assert nocaps["info"]["held_out"] is True and "stamps and emoji" in nocaps["info"]["description"]
    assert counts["nlvr2"]["test1"] == 200 and counts["imagenet"]["val"] == 200
    _read_back(result["tasks"], tokenizer)
