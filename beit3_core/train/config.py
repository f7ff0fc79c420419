"""Pretraining configuration: one typed tree, named recipes, YAML files that override a recipe.

A YAML file names a recipe and overrides any field, e.g.

    recipe: tiny_cpu
    data: {shards: runs/demo/shards}
    optim: {lr: 5.0e-4}
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

OBJECTIVES = ("mdm", "itc")


@dataclass
class ModelSection:
    name: str = "beit3_tiny"
    objective: str = "mdm"
    """"mdm": masked data modeling (pretraining); "itc": image-text contrastive tuning of the dual encoder on the
    shards' pairs (from an MDM checkpoint), the step before zero-shot retrieval."""
    overrides: dict = field(default_factory=dict)
    """BEiT3Config fields, e.g. {vocab_size: 8002, visual_vocab_size: 1024}; filled from the shards if absent."""
    init_checkpoint: str | None = None
    """A released `.pth` or one of our safetensors files to start from: for MDM with its mim/mlm heads; for ITC an
    MDM (projections start at init) or ITC checkpoint."""
    drop_path_rate: float = 0.1
    grad_checkpointing: bool = False


@dataclass
class DataSection:
    shards: str = ""
    """Folder of preprocessed shards (with manifest.json)."""
    images_per_step: int = 8
    texts_per_step: int = 8
    pairs_per_step: int = 8
    """Per-rank batch sizes of each stream kind; the paper uses equal thirds."""
    text_len: int = 64
    pair_text_len: int = 64
    image_mask_ratio: float = 0.4
    """0 = no image masking (ITC)."""
    text_mask_ratio: float = 0.15
    pack_texts: bool = False
    """Pack consecutive monomodal texts into rows of `text_len` tokens (each keeps its <s> ... </s>)."""
    pair_text_mask_ratio: float = 0.5
    """0 = pair texts unmasked (ITC)."""
    num_workers: int = 1
    """DataLoader worker processes per rank (0 = load in the training process)."""
    prefetch_factor: int = 4
    shuffle_buffer: int = 512
    """Records shuffled together: each window of this many stream positions is permuted (seeded), so any
    position is located without reading the ones before it."""
    open_shards: int = 8
    """Shards a rank reads at once, taking records from each in turn (mixes sources before the shuffle)."""
    on_bad_shard: str = "error"
    """"error": stop naming the shard; "skip": count, log and skip it."""


@dataclass
class OptimSection:
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 10
    grad_clip: float = 3.0
    grad_accum_steps: int = 1


@dataclass
class RunSection:
    steps: int = 100
    seed: int = 0
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    log_every: int = 5
    num_workers: int = 2
    """Ray Train workers (ranks)."""
    data_ranks: int = 0
    """Data-parallel ranks of the data stream and the loss; each worker runs data ranks w, w + num_workers, ...
    as micro-batches. 0 = num_workers. Fixed, a run resumes on any number of workers dividing it."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    strategy: str = "ddp"
    """"ddp" or "fsdp" (FSDP2 `fully_shard`; for large and giant on GPUs, also runs on CPU with gloo)."""
    bf16: bool = True
    """bf16 autocast on GPU (ignored on CPU)."""
    max_failures: int = 2
    ray_address: str | None = None
    """None = a local Ray started for the run (or RAY_ADDRESS from the environment)."""
    storage_path: str = "runs/pretrain"
    """Local folder or a pyarrow/fsspec URI (s3://, gs://, ...) shared by all nodes."""
    name: str | None = None
    """Ray run name; default: pretrain-<config hash>-<timestamp>, so a new run never resumes an old one."""
    mlflow_tracking_uri: str | None = None
    """Default: MLFLOW_TRACKING_URI, else sqlite:///<storage_path>/mlflow.db."""
    mlflow_experiment: str = "beit3-pretrain"
    fault_injection: dict = field(default_factory=dict)
    """Tests only: {"kill_rank": r, "at_step": s, "marker": path} SIGKILLs that worker once."""


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, str]:
        """`section.field` -> value, for MLflow params."""
        return {
            f"{s}.{k}": json.dumps(v) if isinstance(v, dict | list | tuple) else str(v)
            for s, section in self.to_dict().items()
            for k, v in section.items()
        }

    def fingerprint(self) -> str:
        """Hash of everything that shapes the training result (not where it is stored or logged)."""
        d = self.to_dict()
        # The data ranks shape the result, the number of workers running them does not.
        d["run"]["data_ranks"] = self.run.data_ranks or self.run.num_workers
        for volatile in (
            "num_workers",
            "name",
            "storage_path",
            "mlflow_tracking_uri",
            "mlflow_experiment",
            "ray_address",
            "fault_injection",
            "max_failures",
        ):
            d["run"].pop(volatile)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


RECIPES: dict[str, dict] = {
    # 2 CPU cores: the tiny model, small batches, short warmup.
    "tiny_cpu": {
        # From scratch: torchscale's own init, token and position embeddings on one scale (see
        # BEiT3Config.text_embed_init_std). With the release's init the text loss stays at the unigram level
        # for the whole of a CPU-sized run.
        "model": {
            "name": "beit3_tiny",
            "drop_path_rate": 0.0,
            "overrides": {"init_mode": "magneto", "text_embed_init_std": 1.0, "pos_init_std": 1.0},
        },
        # Texts are short and cheap next to images: more of them per step, packed into full rows, gives the
        # text head enough targets.
        "data": {
            "images_per_step": 8,
            "texts_per_step": 64,
            "pack_texts": True,
            "pairs_per_step": 8,
            "text_len": 48,
            "pair_text_len": 32,
            "num_workers": 1,
        },
        # A few hundred steps: a gentle decay keeps the lr up for the text head, which leaves the unigram
        # plateau last.
        "optim": {"lr": 5e-4, "min_lr": 2e-4, "warmup_steps": 20, "weight_decay": 0.05},
        "run": {"steps": 300, "num_workers": 2, "checkpoint_every": 50, "log_every": 10},
    },
    # The paper's recipe at base size: per-rank thirds of 2048 / world size, peak lr 1e-3, 10k warmup.
    "base": {
        "model": {"name": "beit3_base_patch16_224", "drop_path_rate": 0.1},
        "data": {
            "images_per_step": 64,
            "texts_per_step": 64,
            "pairs_per_step": 64,
            "text_len": 128,
            "pair_text_len": 64,
            "num_workers": 6,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 10000, "grad_clip": 3.0},
        "run": {
            "steps": 1_000_000,
            "use_gpu": True,
            "checkpoint_every": 2000,
            "keep_checkpoints": 3,
            "log_every": 50,
            "num_workers": 8,
        },
    },
    # ITC tuning on 2 CPU cores: pairs only, unmasked, from the MDM checkpoint named in model.init_checkpoint.
    # The paper does not publish its ITC recipe; a low lr keeps the MDM features while the projections align.
    "itc_tiny_cpu": {
        "model": {
            "name": "beit3_tiny",
            "objective": "itc",
            "drop_path_rate": 0.0,
            "overrides": {"init_mode": "magneto", "text_embed_init_std": 1.0, "pos_init_std": 1.0},
        },
        "data": {
            "images_per_step": 0,
            "texts_per_step": 0,
            "pairs_per_step": 32,
            "pair_text_len": 32,
            "image_mask_ratio": 0.0,
            "pair_text_mask_ratio": 0.0,
            "num_workers": 1,
        },
        "optim": {"lr": 2e-4, "min_lr": 1e-5, "warmup_steps": 5, "weight_decay": 0.05},
        "run": {
            "steps": 40,
            "num_workers": 2,
            "checkpoint_every": 20,
            "log_every": 5,
            "storage_path": "runs/itc",
            "mlflow_experiment": "beit3-itc",
        },
    },
    "large": {
        "model": {"name": "beit3_large_patch16_224", "drop_path_rate": 0.1, "grad_checkpointing": True},
        "data": {
            "images_per_step": 32,
            "texts_per_step": 32,
            "pairs_per_step": 32,
            "text_len": 128,
            "pair_text_len": 64,
            "num_workers": 6,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 10000, "grad_clip": 3.0},
        "run": {
            "steps": 1_000_000,
            "use_gpu": True,
            "strategy": "fsdp",
            "checkpoint_every": 2000,
            "keep_checkpoints": 3,
            "log_every": 50,
            "num_workers": 16,
        },
    },
}


def build_config(recipe: str = "tiny_cpu", overrides: dict | None = None) -> PretrainConfig:
    """A recipe with nested `overrides` applied; unknown sections or fields are errors."""
    if recipe not in RECIPES:
        raise KeyError(f"unknown pretraining recipe {recipe!r}; known: {', '.join(RECIPES)}")
    merged = _merge(RECIPES[recipe], overrides or {})
    sections = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    unknown = set(merged) - set(sections)
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}; known: {sorted(sections)}")
    built = {}
    for name, section_cls in ((f.name, f.default_factory) for f in dataclasses.fields(PretrainConfig)):
        values = merged.get(name, {})
        known = {f.name for f in dataclasses.fields(section_cls)}
        bad = set(values) - known
        if bad:
            raise ValueError(f"unknown fields in section {name!r}: {sorted(bad)}; known: {sorted(known)}")
        if "betas" in values:
            values = values | {"betas": tuple(values["betas"])}
        built[name] = section_cls(**values)
    config = PretrainConfig(**built)
    if config.model.objective not in OBJECTIVES:
        raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {config.model.objective!r}")
    return config


def load_config(path: str | Path, overrides: dict | None = None) -> PretrainConfig:
    """Read a YAML file (`recipe:` plus section overrides); relative paths stay relative to the working directory."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    recipe = raw.pop("recipe", "tiny_cpu")
    config = build_config(recipe, _merge(raw, overrides or {}))
    if config.data.shards not in ("", "synthetic"):
        config.data.shards = str(Path(config.data.shards).resolve())  # Ray workers have another cwd
    if config.model.init_checkpoint:
        config.model.init_checkpoint = str(Path(config.model.init_checkpoint).resolve())
    return config


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
