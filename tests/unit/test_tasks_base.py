"""Tests for the task registry, collate and the release's layer-wise LR decay groups."""

import math

import pytest
import torch
from support.model_inputs import SMALL

from evaluation.tasks import TASKS, get_task, layer_decay_groups
from evaluation.tasks.base import default_collate, layer_ids, no_weight_decay

EXPECTED_TASKS = {"imagenet", "vqav2", "nlvr2", "coco_captioning", "nocaps", "coco_retrieval", "flickr30k_retrieval"}
EXPECTED_TASKS |= {"ade20k", "coco_detection"}
RECIPE_KEYS = {"img_size", "epochs", "warmup_epochs", "lr", "layer_decay", "weight_decay", "batch_size", "drop_path"}


def test_registry_holds_the_benchmark_tasks():
    assert set(TASKS) == EXPECTED_TASKS
    assert get_task("vqav2").name == "vqav2"
    with pytest.raises(KeyError, match="unknown task"):
        get_task("no_such_task")


@pytest.mark.parametrize("name", sorted(EXPECTED_TASKS))
def test_recipes_have_the_released_fields(name):
    task = get_task(name)
    for size in ("base", "large"):
        assert RECIPE_KEYS <= set(task.recipes[size])


# The released recipe tables (spec benchmarks.md, "(d) Recipe" of each unit): (task, field) -> (base, large).
RELEASED = {
    ("imagenet", "lr"): (7e-4, 2e-4),
    ("imagenet", "layer_decay"): (0.65, 0.8),
    ("imagenet", "drop_path"): (0.15, 0.25),
    ("nlvr2", "lr"): (7e-4, 3e-4),
    ("nlvr2", "layer_decay"): (0.65, 0.85),
    ("vqav2", "lr"): (3e-5, 2e-5),
    ("vqav2", "drop_path"): (0.1, 0.15),
    ("coco_captioning", "lr"): (4e-5, 8e-6),
    ("nocaps", "lr"): (1e-5, 8e-6),
    ("coco_retrieval", "lr"): (2e-4, 5e-5),
    ("coco_retrieval", "layer_decay"): (0.65, 0.85),
}


@pytest.mark.parametrize(("task", "field"), sorted(RELEASED))
def test_recipe_follows_the_model_size(task, field):
    base, large = RELEASED[task, field]
    assert get_task(task).recipe()[field] == base
    assert get_task(task).recipe("beit3_base_patch16_224")[field] == base
    assert get_task(task).recipe("beit3_large_patch16_224")[field] == large


def test_released_recipe_values():
    assert get_task("imagenet").recipe()["label_smoothing"] == 0.1
    assert get_task("vqav2").recipe()["task_head_lr_weight"] == 20 and get_task("vqav2").recipe()["img_size"] == 480
    assert get_task("coco_captioning").recipe()["mask_prob"] == 0.7
    assert get_task("flickr30k_retrieval").recipe()["lr"] == 1e-4


def test_task_facts():
    """Evaluation split, submission format and text needs are the task's own (spec: public ground truth)."""
    assert [get_task(t).eval_split for t in ("imagenet", "vqav2", "nlvr2", "coco_retrieval")] == [
        "val",
        "val",
        "test",
        "test",
    ]
    assert get_task("nlvr2").submission_name("test") == "nlvr2_test_submission.csv"
    assert get_task("vqav2").submission_name("val") == "vqav2_val_submission.json"
    assert not get_task("imagenet").reads_text and get_task("vqav2").reads_text
    assert get_task("coco_captioning").pretrained_heads == ("mlm_head.",) and get_task("nlvr2").pretrained_heads == ()


def test_default_collate_stacks_tensors_and_numbers():
    items = [{"x": torch.ones(2), "y": 1, "s": "a"}, {"x": torch.zeros(2), "y": 2, "s": "b"}]
    batch = default_collate(items)
    assert batch["x"].shape == (2, 2) and batch["y"].tolist() == [1, 2] and batch["s"] == ["a", "b"]


@pytest.fixture(scope="module")
def vqa_model():
    torch.manual_seed(0)
    return get_task("vqav2").build_model("beit3_tiny", num_answers=7, **SMALL)


def test_layer_ids_follow_module_structure(vqa_model):
    ids = layer_ids(vqa_model)
    named = {name: ids[p] for name, p in vqa_model.named_parameters()}
    num_layers = SMALL["num_layers"]
    for name, layer_id in named.items():
        if "embed" in name:  # the release's substring rule, for comparison
            expected = 0
        elif "layers." in name:
            expected = int(name.split("layers.")[1].split(".")[0]) + 1
        else:
            expected = num_layers + 1
        assert layer_id == expected, name


def test_layer_decay_groups_scale_and_weight_decay(vqa_model):
    groups = layer_decay_groups(vqa_model, lr=1e-3, decay=0.5, weight_decay=0.05)
    num_layers = SMALL["num_layers"]
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len(set(params)) == len(list(vqa_model.parameters()))
    for group in groups:
        assert math.isclose(group["lr_scale"], 0.5 ** (num_layers + 1 - group["layer_id"]))
        assert math.isclose(group["lr"], 1e-3 * group["lr_scale"])
    decay_of = {p: g["weight_decay"] for g in groups for p in g["params"]}
    beit3 = vqa_model.beit3
    assert decay_of[beit3.vision_embed.cls_token] == 0.0
    assert decay_of[beit3.encoder.embed_positions.A.weight] == 0.0
    # The release decays the text embedding, the text positions and the mask token (they are not 1-D).
    assert decay_of[beit3.text_embed.weight] == 0.05
    assert decay_of[beit3.encoder.embed_positions.B.weight] == 0.05
    assert decay_of[beit3.vision_embed.mask_token] == 0.05
    assert decay_of[vqa_model.head[0].bias] == 0.0 and decay_of[vqa_model.pooler.norm.weight] == 0.0
    assert decay_of[vqa_model.head[0].weight] == 0.05


def test_head_lr_scale_covers_head_not_pooler(vqa_model):
    groups = layer_decay_groups(vqa_model, lr=1e-3, decay=1.0, weight_decay=0.01, head_lr_scale=20.0)
    lr_of = {p: g["lr"] for g in groups for p in g["params"]}
    assert all(math.isclose(lr_of[p], 2e-2) for p in vqa_model.head.parameters())
    assert all(math.isclose(lr_of[p], 1e-3) for p in vqa_model.pooler.parameters())
    assert math.isclose(lr_of[vqa_model.beit3.text_embed.weight], 1e-3)
    with pytest.raises(ValueError, match="head_lr_scale"):
        layer_decay_groups(vqa_model, lr=1e-3, decay=0.9, weight_decay=0.01, head_lr_scale=20.0)


def test_groups_build_an_optimizer(vqa_model):
    optimizer = torch.optim.AdamW(layer_decay_groups(vqa_model, 1e-3, 0.65, 0.05))
    assert len(optimizer.param_groups) > 2
    assert no_weight_decay(vqa_model)
