"""A benchmark's `evaluate_also` units: scored with the fine-tuned model on their own split, beside its outputs."""

from pathlib import Path

import pytest

from evaluation.finetune.config import build_finetune_config
from flows.steps.finetune import transfer_config, unit_baseline_of

CAPTIONING = Path(__file__).resolve().parents[2] / "configs" / "finetune_demo_coco_captioning.yaml"


def _captioning(tmp_path: Path):
    overrides = {"config": str(CAPTIONING), "output_dir": str(tmp_path / "finetune" / "coco_captioning")}
    return build_finetune_config("coco_captioning", overrides | {"data": {"eval_split": "test"}})


def test_the_unit_keeps_the_data_and_model_and_takes_its_own_split(tmp_path):
    source = _captioning(tmp_path)
    cfg = transfer_config("nocaps", source)
    assert cfg.task == "nocaps" and source.eval_split == "test" and cfg.eval_split == "val"  # NoCaps test: server
    assert (cfg.data.root, cfg.data.tokenizer, cfg.model.img_size) == (
        source.data.root,
        source.data.tokenizer,
        source.model.img_size,
    )
    assert Path(cfg.run.output_dir) == tmp_path / "finetune" / "coco_captioning-nocaps"


def test_an_unknown_unit_fails_when_its_baseline_is_read(tmp_path):
    with pytest.raises((KeyError, ValueError), match="nocap"):
        unit_baseline_of(transfer_config("nocap", _captioning(tmp_path)))
