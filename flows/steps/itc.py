"""ITC step: image-text contrastive tuning of the pretrained checkpoint on the step's shards, with Ray Train.

The same driver and run handling as the pretrain step (`flows.steps.pretrain.run_training`): the Ray run name is
the cache key (`itc-<hash>`), over the dataset version, the pretrained checkpoint's sha256, the resolved ITC
config and the code, so new shards or a new pretrained model rerun it and nothing else does.
"""

import copy

from prefect import task

from beit3_core.train.config import PretrainConfig
from flows.settings import Settings
from flows.steps.keys import code_hash, step_key
from flows.steps.pretrain import run_training
from flows.steps.tracking import Tracking


def itc_config_of(cfg: PretrainConfig, pretrained: dict) -> PretrainConfig:
    cfg = copy.deepcopy(cfg)
    cfg.model.init_checkpoint = pretrained["checkpoint"]
    return cfg


def itc_key_of(cfg: PretrainConfig, dataset: dict, pretrained: dict) -> str:
    cfg = itc_config_of(cfg, pretrained)
    code = code_hash("beit3_core", "flows/steps/itc.py", "flows/steps/pretrain.py")
    parts = (dataset["dataset_version"], pretrained["checkpoint_sha256"], cfg.fingerprint(), cfg.run.storage_path)
    return step_key("itc", *parts, code)


def itc_key(_ctx, params: dict) -> str:
    return itc_key_of(params["cfg"], params["dataset"], params["pretrained"])


@task(cache_key_fn=itc_key)
def itc(
    cfg: PretrainConfig, dataset: dict, pretrained: dict, settings: Settings, tracking: Tracking, force: bool = False
) -> dict:
    cfg = itc_config_of(cfg, pretrained)
    cfg.run.name = itc_key_of(cfg, dataset, pretrained)
    out = run_training(cfg, "itc", dataset, settings, tracking, force, {"beit3.pretrain_run": pretrained["run_name"]})
    return out | {"pretrain_checkpoint": pretrained["checkpoint"]}
