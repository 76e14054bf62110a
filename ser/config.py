"""Structured config schemas, registered in Hydra's ConfigStore.

``conf/config.yaml`` starts from ``base_config`` (the :class:`Config` schema), so every group option
is merged into a typed node: a mistyped key or a value of the wrong type fails when the config is
composed, not an hour into training. :func:`register_configs` stores the schema; ``train.py`` and
``ser`` call it before composing. :func:`compose` gives the whole config outside of ``@hydra.main``,
:func:`compose_data` its ``data`` part alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, first_line

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(UserError):
    """The config cannot be composed: no config directory, an unknown key, a value of the wrong type."""


@dataclass
class DataConfig:
    # the corpus plug-in (ser.data.corpora): ravdess, cremad, tess, savee, emodb, iemocap, manifest, folders, hf;
    # conf/data/<corpus>.yaml sets it with that corpus's defaults (data=<corpus>)
    corpus: str = "ravdess"
    root: str = "data/ravdess"  # extracted tree, the official zip, or a folder to download it into
    labels: list[str] | None = None  # the classes and their order; None: the corpus's default
    # corpus label -> class (merge, rename), or null to drop it: +data.label_map.ps=surprise
    label_map: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # the plug-in's own settings (columns, audio_root, ...)
    cache_dir: str = "~/.cache/ser"
    download: bool = True
    strict: bool = False  # true: refuse a corpus with unusable files instead of skipping them
    # make a synthetic corpus (RAVDESS's actors; another corpus's stand-in with as many speakers as it has,
    # up to this) at root when root holds none
    synthesize_actors: int | None = None
    split: str = "random"  # random | speaker | fold
    fold: int | None = None  # with split=fold: 1..6 for RAVDESS (EmoBox), the corpus's protocol's folds otherwise
    test_size: float = 0.2  # split=random
    val_actors: int = 2  # split=speaker|fold
    test_actors: int = 4  # split=speaker
    batch_size: int = 4
    eval_batch_size: int | None = None
    num_workers: int = 0  # the cache is memory-mapped, so loading a batch is a copy, not a decode
    max_seconds: float | None = None  # random crop of training clips
    sample_rate: int = 16_000
    normalize: bool = True  # zero mean, unit variance per clip, as Wav2Vec2FeatureExtractor
    trim_db: float | None = None  # e.g. -40: cut the silence around the speech (RAVDESS has ~1 s of it)
    bucket_batches: int = 32  # batches per length bucket: larger pads less, smaller shuffles more


@dataclass
class ModelConfig:
    encoder: str | None = "jonatasgrosman/wav2vec2-large-xlsr-53-english"
    encoder_config: dict[str, Any] | None = None  # inline config: a randomly initialised encoder
    pretrained: bool = True
    # a Hugging Face audio-classification model to start from, head included; its architecture wins
    # over encoder, encoder_config and the head's shape settings
    init_from: str | None = None
    pooling: str = "mean"  # mean | max | attentive | stats
    # hf (projector + classifier, as Wav2Vec2ForSequenceClassification) | dense_tanh | emobox (hf with a ReLU)
    head: str = "hf"
    projector_dim: int = 256
    head_dropout: float = 0.0
    use_weighted_layer_sum: bool = False
    utterance_norm: bool = False  # each clip's frames to zero mean, unit variance over (T, D), as EmoBox
    freeze_feature_encoder: bool = True
    freeze_encoder_steps: int = 0
    # the whole encoder frozen, in eval mode, for the whole run: only the head (and layer_weights) trains
    freeze_encoder: bool = False
    # with freeze_encoder: train on the encoder's hidden states, extracted once into data.cache_dir;
    # None: true when frozen
    cache_features: bool | None = None
    gradient_checkpointing: bool = False
    attn_implementation: str | None = "sdpa"
    class_weights: list[float] | None = None
    label_smoothing: float = 0.0


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-4
    encoder_lr: float | None = None  # defaults to lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class SchedulerConfig:
    name: str = "linear"  # linear | constant
    warmup_steps: int = 0  # optimizer steps of linear warm-up; when above 0, warmup_ratio is ignored
    warmup_ratio: float = 0.0  # warm-up as a fraction of all optimizer steps; used only when warmup_steps is 0


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None  # None: 16-mixed on CUDA, 32-true on CPU
    max_epochs: int = 3
    max_steps: int = -1
    accumulate_grad_batches: int = 2
    gradient_clip_val: float | None = None
    deterministic: bool = False
    log_every_n_steps: int = 10
    # Any, not float: Lightning reads an int as a number of batches and a float as a fraction, and
    # a float field would turn limit_val_batches=1 into 1.0, all of them.
    val_check_interval: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: int = 2
    fast_dev_run: bool = False
    enable_progress_bar: bool = True
    # Not Lightning Trainer arguments: they choose two of the callbacks it is given.
    rich_progress: bool = True  # rich's progress bar rather than tqdm's (with enable_progress_bar)
    model_summary_depth: int = 1


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb | csv | none
    project: str = "ser"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None  # online | offline; None: online when a W&B key is configured, else offline


@dataclass
class CheckpointConfig:
    monitor: str = "val/uar"  # the metric that picks checkpoints/best.ckpt (and early stopping's)
    mode: str = "max"
    early_stopping_patience: int | None = None  # epochs without improvement; None disables
    # also write last.ckpt every N optimizer steps, for runs that may be killed without warning
    # (SIGTERM always saves one). Off by default: a large encoder's checkpoint with Adam's state
    # takes gigabytes.
    every_n_steps: int | None = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 42
    run_dir: str = "${hydra:runtime.output_dir}"
    ckpt_path: str | None = None  # resume: "last" (this run directory's), a run directory, or a .ckpt file
    # the metric returned to sweepers (its best value when checkpoint.monitor is that metric);
    # None: checkpoint.monitor
    objective: str | None = None
    # oneDNN's CPU convolutions while fitting. Off: they build kernels for every new input shape, and
    # clips of every length make each batch one, which slows training on the tiny encoder
    # (benchmarks/train.py, BENCHMARKS.md). Prediction keeps them, where they are faster.
    cpu_onednn: bool = False
    # torch.compile the encoder while fitting. Off: on a few CPU cores the tiny encoder's compilation
    # takes longer than it saves (benchmarks/train.py --variant compile=true, BENCHMARKS.md).
    compile: bool = False
    test_after_fit: bool = True
    # after testing, score the model on each of these corpora too, over the labels it shares with each:
    # "<corpus>" (its conf/data/<corpus>.yaml root) or "<corpus>:<root>"; see ser.evaluate.evaluate_corpora
    eval_corpora: list[str] = field(default_factory=list)


def register_configs() -> None:
    """Make ``base_config`` known to Hydra; call before composing. Idempotent."""
    from hydra.core.config_store import ConfigStore  # here, so that reading DataConfig does not import Hydra

    ConfigStore.instance().store(name="base_config", node=Config)


def compose(overrides: Sequence[str] = ()):
    """The project's Hydra config with ``overrides``, outside of ``@hydra.main``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    _check_conf_dir()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_one_line(error)) from None


def compose_data(overrides: Sequence[str] = ()):
    """The ``data`` config: its schema, ``conf/data/<corpus>.yaml``, then ``data.KEY=VALUE`` overrides.

    ``data=<corpus>`` among the overrides chooses the corpus file (default ``ravdess``).

    ``ser prepare`` takes data settings only, so it composes just those with OmegaConf rather than
    the whole Hydra config: Hydra's import and composition would double a warm ``ser prepare``'s
    time (BENCHMARKS.md). The schema still refuses unknown keys and wrong types.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    corpora = [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
    overrides = [o for o in overrides if not o.startswith("data=")]
    wrong = [o for o in overrides if not o.startswith("data.") or "=" not in o]
    if wrong:
        raise ConfigError(f"ser prepare takes data=<corpus> and data.KEY=VALUE overrides only, not {' '.join(wrong)}")
    _check_conf_dir()
    corpus_file = CONF_DIR / "data" / f"{corpora[-1] if corpora else 'ravdess'}.yaml"
    if not corpus_file.is_file():
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
        raise ConfigError(f"no corpus config {corpus_file.name} for data={corpora[-1]}; choose one of {known}")
    try:
        return OmegaConf.merge(
            OmegaConf.structured(DataConfig),
            OmegaConf.load(corpus_file),
            OmegaConf.from_dotlist([o.removeprefix("data.") for o in overrides]),
        )
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from None


def objective_metric(cfg: Any) -> str:
    """The metric :func:`ser.train.train` returns to sweepers: ``objective``, else ``checkpoint.monitor``."""
    return cfg.objective or cfg.checkpoint.monitor


def _one_line(error: BaseException) -> str:
    """Hydra's and OmegaConf's messages spread the key and the reason over lines and causes: join them."""
    text = " ".join(str(error).split()) or first_line(error)
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        text += ": " + _one_line(cause)
    return text


def _check_conf_dir() -> None:
    if not CONF_DIR.is_dir():
        raise ConfigError(
            f"no config directory at {CONF_DIR}; install ser from its source tree with `pip install -e .`"
        )
