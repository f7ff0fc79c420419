"""Tests for the ImageNet task: class-folder and labels-file layouts, released head keys, loss, metrics."""

import io
import json

import pytest
import torch
from PIL import Image
from support.model_inputs import SMALL

from evaluation.score import score_files
from evaluation.tasks import get_task
from evaluation.tasks.imagenet import index_split

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"]
TASK = get_task("imagenet")
DIM = SMALL["embed_dim"]


def _image(path, color, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 36), color).save(buffer, format=fmt)
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_fx")
    for c, wnid in enumerate(WNIDS):
        for k in range(2):
            # One ".JPEG" that is really PNG bytes, as some ILSVRC files are.
            fmt = "PNG" if (c, k) == (0, 1) else "JPEG"
            _image(root / "train" / wnid / f"{wnid}_{k}.JPEG", (40 * c, 100, 30 * k), fmt)
        _image(root / "val" / wnid / f"ILSVRC2012_val_{c + 1:08d}.JPEG", (40 * c, 100, 0))
        _image(root / "flatval" / f"ILSVRC2012_val_{c + 1:08d}.JPEG", (40 * c, 100, 0))
    return root


def test_class_folders_index(root):
    train = index_split(root, "train")
    val = index_split(root, "val")
    assert len(train) == 12 and len(val) == 6
    assert train[0] == ("train/n01440764/n01440764_0.JPEG", 0)
    assert [label for _, label in val] == list(range(6))  # labels = sorted wnid order
    assert index_split(root, "test") == val


def test_labels_file_layout(tmp_path, root):
    (tmp_path / "train").symlink_to(root / "train")
    (tmp_path / "val").symlink_to(root / "flatval")
    lines = [f"ILSVRC2012_val_{i + 1:08d}.JPEG {5 - i}" for i in range(6)]
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    val = index_split(tmp_path, "val")
    assert val[0] == ("val/ILSVRC2012_val_00000001.JPEG", 5)


def test_dataset_items(root):
    dataset = TASK.dataset("val", root, None, img_size=32)
    item = dataset[0]
    assert item["image"].shape == (3, 32, 32) and item["label"] == 0
    assert TASK.dataset("train", root, None, img_size=32)[1]["image"].shape == (3, 32, 32)


def test_head_keys_and_init():
    torch.manual_seed(0)
    model = TASK.build_model("beit3_tiny", num_classes=6, **SMALL)
    head = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("beit3.")}
    assert head == {"fc_norm.weight": (DIM,), "fc_norm.bias": (DIM,), "head.weight": (6, DIM), "head.bias": (6,)}
    assert not any(k.startswith("beit3.encoder.layer_norm") for k in model.state_dict())  # normalize_output=False
    assert model.head.weight.abs().max() <= 0.02 * 1e-3 + 1e-12


def test_loss_backward_predict_and_score(root, tmp_path):
    torch.manual_seed(0)
    model = TASK.build_model("beit3_tiny", num_classes=6, **SMALL)
    dataset = TASK.dataset("val", root, None, img_size=32)
    batch = TASK.collate([dataset[i] for i in range(len(dataset))])
    loss, metrics = TASK.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad is not None
    assert model.beit3.text_embed.weight.grad is None  # vision-only forward
    records = TASK.predict(model.eval(), batch)
    result = TASK.evaluate(records, dataset)
    assert set(result) == {"acc1", "acc5", "num_images"} and result["num_images"] == 6
    submission = TASK.write_submission(records, tmp_path / "pred.json", dataset)
    annotations = tmp_path / "labels.json"
    annotations.write_text(json.dumps({path.split("/")[-1]: label for path, label in dataset.items}))
    scored = score_files("imagenet", submission, annotations)
    assert scored["accuracy"] == pytest.approx(result["acc1"])
