"""Pretraining configuration: one typed tree, named recipes, YAML files that override a recipe.

A YAML file names a recipe and overrides any field, e.g.

    recipe: tiny_cpu
    data: {shards: runs/demo/shards}
    optim: {lr: 5.0e-4}
"""

from dataclasses import dataclass, field
from pathlib import Path

from beit3_core.runtime.config import ConfigTree, RunSettings, absolute, build_tree, fingerprint, merge, read_yaml

OBJECTIVES = ("mdm", "itc")
STRATEGIES = ("ddp", "fsdp")
SYNTHETIC_SHARDS = "synthetic"


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
    loss_weights: dict = field(default_factory=dict)
    """MDM loss weight per stream kind (`image`, `text`, `pair_image`, `pair_text`; absent = 1.0, the paper's equal
    weights)."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"model.objective must be one of {OBJECTIVES}, got {self.objective!r}")


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

    def __post_init__(self) -> None:
        if self.open_shards < 1 or self.shuffle_buffer < 1 or self.prefetch_factor < 1 or self.num_workers < 0:
            raise ValueError(
                "data: need open_shards >= 1, shuffle_buffer >= 1, prefetch_factor >= 1, num_workers >= 0; got "
                f"{self.open_shards}, {self.shuffle_buffer}, {self.prefetch_factor}, {self.num_workers}"
            )
        if self.on_bad_shard not in ("error", "skip"):
            raise ValueError(f"data.on_bad_shard must be 'error' or 'skip', got {self.on_bad_shard!r}")
        per_step = (self.images_per_step, self.texts_per_step, self.pairs_per_step)
        if min(per_step) < 0 or not any(per_step):
            raise ValueError(f"data: the per-step batch sizes must be >= 0 and not all 0, got {per_step}")
        for name in ("image_mask_ratio", "text_mask_ratio", "pair_text_mask_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be in [0, 1), got {getattr(self, name)}")


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

    def __post_init__(self) -> None:
        if self.grad_accum_steps < 1 or self.warmup_steps < 0 or self.lr <= 0:
            raise ValueError(
                f"optim: need grad_accum_steps >= 1, warmup_steps >= 0, lr > 0; got {self.grad_accum_steps}, "
                f"{self.warmup_steps}, {self.lr}"
            )


@dataclass(kw_only=True)
class RunSection(RunSettings):
    steps: int = 100
    checkpoint_every: int = 25
    log_every: int = 5
    data_ranks: int = 0
    """Data-parallel ranks of the data stream and the loss; each worker runs data ranks w, w + num_workers, ...
    as micro-batches. 0 = num_workers. Fixed, a run resumes on any number of workers dividing it."""
    strategy: str = "ddp"
    """"ddp" or "fsdp" (FSDP2 `fully_shard`; for large and giant on GPUs, also runs on CPU with gloo)."""
    bf16: bool = True
    """bf16 autocast on GPU (on CPU: `cpu_bf16`)."""
    storage_path: str = "runs/pretrain"
    mlflow_experiment: str = "beit3-pretrain"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strategy not in STRATEGIES:
            raise ValueError(f"run.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.steps < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"run: need steps >= 1 and checkpoint_every >= 1, got {self.steps}, {self.checkpoint_every}"
            )
        if self.data_ranks < 0 or (self.data_ranks and self.data_ranks % self.num_workers):
            raise ValueError(
                f"run.data_ranks={self.data_ranks} must be 0 or a multiple of run.num_workers={self.num_workers}"
            )


@dataclass
class PretrainConfig(ConfigTree):
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    def fingerprint(self) -> str:
        """Hash of everything that shapes the training result (not where it is stored or logged)."""
        d = self.to_dict()
        # The data ranks shape the result, the number of workers running them does not.
        d["run"]["data_ranks"] = self.run.data_ranks or self.run.num_workers
        return fingerprint(d, {"run": (*RunSection.VOLATILE, "num_workers")})


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
    """A recipe with nested `overrides` applied; unknown sections or fields and bad values are errors."""
    if recipe not in RECIPES:
        raise KeyError(f"unknown pretraining recipe {recipe!r}; known: {', '.join(RECIPES)}")
    return build_tree(PretrainConfig, merge(RECIPES[recipe], overrides or {}))


def load_config(path: str | Path, overrides: dict | None = None) -> PretrainConfig:
    """Read a YAML file (`recipe:` plus section overrides); local paths are made absolute (Ray workers have
    another working directory)."""
    raw = read_yaml(path)
    recipe = raw.pop("recipe", "tiny_cpu")
    config = build_config(recipe, merge(raw, overrides or {}))
    if config.data.shards != SYNTHETIC_SHARDS:
        config.data.shards = absolute(config.data.shards) or ""
    config.model.init_checkpoint = absolute(config.model.init_checkpoint)
    return config
