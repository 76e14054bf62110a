"""``SERModule``: the Lightning side of training a speech emotion classifier.

The network itself (encoder, pooling, head) lives in :mod:`ser.models`; this module only says how
to train, evaluate and predict with it: the loss, the metrics, the optimizer and its schedule, and
when the encoder is frozen.

``__init__`` takes plain values only and builds the network itself, as in Lightning's fine-tuning
example, so a checkpoint needs nothing else to be loaded::

    module = SERModule.load_from_checkpoint("checkpoints/best.ckpt")  # no Hydra, no download

To make that hold for a pretrained encoder, the checkpoint stores the encoder's full config and says
``pretrained=False``: loading rebuilds the architecture from the config and then fills in the trained
weights, instead of fetching the original encoder.

A batch is a dict of ``waveforms`` (B, T) float32, ``attention_mask`` (B, T) bool (True on real
samples), ``labels`` (B,) long and ``index`` (B,) long (the clip's position in its dataset); with a
frozen encoder on cached features (:class:`ser.data.features.CachedFeatureDataModule`), ``frames``
(B, T', D) or (B, T', L, D) and ``mask`` (B, T') take the place of ``waveforms`` and ``attention_mask``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import ConfusionMatrix, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from .data.ravdess import EMOTIONS
from .errors import UserError
from .models.classifier import SpeechClassifier
from .models.encoder import build_encoder, load_encoder_config

OPTIMIZERS = ("adam", "adamw")
SCHEDULERS = ("linear", "constant")


class DivergedError(UserError, FloatingPointError):
    """The training loss stopped being a finite number; the message says which setting to lower."""


class SERModule(pl.LightningModule):
    """Fine-tunes a speech encoder with a pooled classification head on emotion labels.

    ``forward(waveforms (B, T), attention_mask (B, T) | None) -> logits (B, C)``, C = ``len(labels)``.

    Model: ``encoder`` is a Hugging Face name or directory; ``encoder_config`` overrides fields of
    its config, or, with ``encoder=None``, is the whole config (``model_type`` included) of an
    encoder built from scratch. ``pretrained=False`` initialises the encoder randomly.
    Training: ``freeze_feature_encoder`` keeps the CNN feature encoder frozen throughout;
    ``freeze_encoder_steps`` trains the head alone for that many optimizer steps first;
    ``freeze_encoder`` keeps the whole encoder frozen and in eval mode for the whole run, so that its
    hidden states can come from a cache: a batch may then hold ``frames`` and ``mask`` instead of audio.
    ``encoder_lr`` (default ``lr``) is the encoder's learning rate, ``lr`` the head's.
    ``labels``, ``sample_rate``, ``normalize`` and ``trim_db`` describe the inputs and outputs, so that
    prediction and export code can read them from a checkpoint and preprocess exactly as in training.
    """

    def __init__(
        self,
        encoder: str | None = "jonatasgrosman/wav2vec2-large-xlsr-53-english",
        encoder_config: dict | None = None,
        pretrained: bool = True,
        labels: Sequence[str] = EMOTIONS,
        pooling: str = "mean",
        head: str = "hf",
        projector_dim: int = 256,
        head_dropout: float = 0.0,
        use_weighted_layer_sum: bool = False,
        utterance_norm: bool = False,
        freeze_feature_encoder: bool = True,
        freeze_encoder_steps: int = 0,
        freeze_encoder: bool = False,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = "sdpa",
        optimizer: str = "adam",
        lr: float = 1e-4,
        encoder_lr: float | None = None,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        scheduler: str = "linear",
        warmup_steps: int = 0,
        warmup_ratio: float = 0.0,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        sample_rate: int = 16000,
        normalize: bool = True,
        trim_db: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        # Wrong names fail here, before minutes of loading an encoder, not when training starts.
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        labels = [str(label) for label in labels]
        num_labels = len(labels)
        if class_weights is not None and len(class_weights) != num_labels:
            raise ValueError(
                f"class_weights has {len(class_weights)} values for {num_labels} labels: give one weight per label"
            )

        config = load_encoder_config(encoder, encoder_config)
        encoder_model = build_encoder(
            config,
            name_or_path=encoder,
            pretrained=pretrained,
            attn_implementation=attn_implementation,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.model = SpeechClassifier(
            encoder_model,
            num_labels=num_labels,
            pooling=pooling,
            head=head,
            projector_dim=projector_dim,
            head_dropout=head_dropout,
            use_weighted_layer_sum=use_weighted_layer_sum,
            utterance_norm=utterance_norm,
        )
        if freeze_feature_encoder:
            self.model.freeze_feature_encoder()
        if freeze_encoder:
            self.model.set_encoder_trainable(False)
        # from_pretrained hands the encoder back in eval mode, and Lightning (2.x) starts training in
        # whatever mode the modules are in: without this, dropout and SpecAugment would silently be off.
        self.train()  # with freeze_encoder, the encoder stays in eval mode (see train())

        # Self-describing checkpoint: the full config of the encoder as built, and no pretrained
        # weights to fetch, so load_from_checkpoint rebuilds the architecture offline and then loads
        # the trained weights over it. `encoder` goes too, because with a name load_encoder_config
        # would read that name's config from the Hub; the name stays in encoder_config["_name_or_path"].
        # (Loggers still record the arguments as given: they log hparams_initial.)
        self.hparams["encoder"] = None
        self.hparams["encoder_config"] = encoder_model.config.to_dict()
        self.hparams["pretrained"] = False
        self.hparams["labels"] = labels

        # Not persistent: the weights are rebuilt from hparams, so old and new checkpoints load alike.
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

        # One metric set per stage, as submodules: they follow the module across devices, and
        # compute() gathers their state across DDP ranks.
        self.train_metrics = _classification_metrics(num_labels)
        self.val_metrics = _classification_metrics(num_labels)
        self.test_metrics = _classification_metrics(num_labels)
        # Confusion matrices (C, C) of counts, rows = true label, set after each val/test epoch.
        self.val_confusion: Tensor | None = None
        self.test_confusion: Tensor | None = None
        self._encoder_frozen = freeze_encoder  # by freeze_encoder_steps; applied in on_train_batch_start

    # --- the network --------------------------------------------------------------------------

    def forward(self, waveforms: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (B, C) for waveforms (B, T), attention_mask (B, T) bool, True on real samples."""
        return self.model(waveforms, attention_mask)

    def logits(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits (B, C) of a batch of audio, or of cached frames (see the module's docstring)."""
        if "frames" in batch:
            return self.model.forward_frames(batch["frames"], batch.get("mask"))
        return self(batch["waveforms"], batch.get("attention_mask"))

    def train(self, mode: bool = True) -> SERModule:
        super().train(mode)
        if self.hparams.get("freeze_encoder"):
            # a frozen encoder computes what its cache holds: no dropout, no SpecAugment
            self.model.encoder.eval()
        return self

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of logits (B, C) against labels (B,), with the class weights and label smoothing."""
        # float32: under bf16/fp16 autocast the logits are low precision, the loss should not be
        return F.cross_entropy(
            logits.float(), labels, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing
        )

    # --- steps --------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, logits = self._shared_step(batch)
        if not torch.isfinite(loss):
            # Adam would turn one NaN gradient into NaN weights for good: stop while the cause is clear.
            raise DivergedError(
                f"loss became {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); "
                "lower optimizer.lr, or use trainer.precision=32 if training in 16-bit"
            )
        self.train_metrics.update(logits.argmax(dim=-1), batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """``{"probs": softmax probabilities (B, C) float32, "index": the batch's clip indices (B,)}``."""
        logits = self.logits(batch)
        return {"probs": logits.float().softmax(dim=-1), "index": batch["index"]}

    def _shared_step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self.logits(batch)
        return self.loss(logits, batch["labels"]), logits

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        loss, logits = self._shared_step(batch)
        self._metrics(stage).update(logits.argmax(dim=-1), batch["labels"])
        # batch_size weights the epoch mean by clips, so a short last batch counts for what it holds;
        # sync_dist averages the ranks' means
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(logits))

    # --- epoch ends: metrics ------------------------------------------------------------------

    def on_train_epoch_end(self) -> None:
        values = self._compute_metrics("train")
        if values:
            self.log("train/acc", values["acc"])

    def on_validation_epoch_end(self) -> None:
        values = self._compute_metrics("val")
        if not values:
            return
        self.log_dict({f"val/{name}": values[name] for name in ("acc", "uar", "f1")})
        if not self.trainer.sanity_checking:
            self.val_confusion = values["confusion"].cpu()

    def on_test_epoch_end(self) -> None:
        values = self._compute_metrics("test")
        if not values:
            return
        logged = {f"test/{name}": values[name] for name in ("acc", "uar", "f1")}
        for i, label in enumerate(self.hparams.labels):
            logged[f"test/recall/{label}"] = values["recall_per_class"][i]
            logged[f"test/f1/{label}"] = values["f1_per_class"][i]
        self.log_dict(logged)
        self.test_confusion = values["confusion"].cpu()

    def _metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def _compute_metrics(self, stage: str) -> dict[str, Tensor]:
        # compute() has already gathered every rank's counts, so these values need no sync_dist.
        metrics = self._metrics(stage)
        if not metrics["confusion"].update_called:  # no batch this epoch, e.g. limit_val_batches=0
            return {}
        values = metrics.compute()
        metrics.reset()
        return values

    # --- freezing the encoder for the first steps --------------------------------------------

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Decided from global_step (optimizer steps, restored on resume), so a run resumed before or
        # after step freeze_encoder_steps freezes exactly as an uninterrupted one.
        self._freeze_encoder(self.global_step < self.hparams.freeze_encoder_steps)

    def _freeze_encoder(self, frozen: bool) -> None:
        frozen = frozen or bool(self.hparams.get("freeze_encoder"))
        if frozen != self._encoder_frozen:
            self.model.set_encoder_trainable(
                not frozen, keep_feature_encoder_frozen=self.hparams.freeze_feature_encoder
            )
            self._encoder_frozen = frozen

    def on_fit_start(self) -> None:
        strategy = self.trainer.strategy
        if (
            self.hparams.freeze_encoder_steps > 0
            and isinstance(strategy, pl.strategies.DDPStrategy)
            and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False)
        ):
            # DDP waits for a gradient of every parameter it was given; a frozen encoder sends none.
            raise ValueError(
                "freeze_encoder_steps under DDP needs trainer.strategy=ddp_find_unused_parameters_true "
                "(or ddp_spawn_find_unused_parameters_true)"
            )

    # --- optimizer and schedule ---------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        # The encoder's parameters go in even while freeze_encoder_steps holds them frozen, so they
        # train once unfrozen; only the permanently frozen feature encoder stays out. Unfreeze first
        # to see which those are (on_train_batch_start applies the freezing for the current step).
        self._freeze_encoder(False)
        encoder_lr = hp.lr if hp.encoder_lr is None else hp.encoder_lr
        groups = [
            {
                "name": "encoder",
                "params": [p for p in self.model.encoder_parameters() if p.requires_grad],
                "lr": encoder_lr,
            },
            {"name": "head", "params": [p for p in self.model.head_parameters() if p.requires_grad], "lr": hp.lr},
        ]
        groups = [group for group in groups if group["params"]]
        # Adam with its L2 weight_decay, as the recipe (decay 0); AdamW decouples the decay.
        optimizer_class = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        optimizer = optimizer_class(groups, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay)

        if self._schedule_needs_step_count() and self.trainer.max_steps == -1 and self.trainer.max_epochs == -1:
            raise ValueError(
                f"scheduler {hp.scheduler!r} needs a known number of steps: set trainer.max_epochs or trainer.max_steps"
            )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor_function())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}

    def _schedule_needs_step_count(self) -> bool:
        """Linear decay and ``warmup_ratio`` are fractions of the whole run; a constant schedule and
        ``warmup_steps`` are not."""
        return self.hparams.scheduler == "linear" or self.hparams.warmup_ratio > 0

    def _lr_factor_function(self):
        """``step -> multiplier`` of the base learning rate, reading the number of steps when first needed.

        Not in configure_optimizers: asking Lightning for ``estimated_stepping_batches`` there builds the
        training dataloader before a checkpoint is restored, and the saved position inside the epoch
        is then never handed to it. By step 1 the dataloader exists. A plain function, not an object:
        LambdaLR would save an object's attributes, the trainer among them, into the checkpoint.
        """
        hp = self.hparams
        decay = hp.scheduler == "linear"
        has_warmup = hp.warmup_steps > 0 or hp.warmup_ratio > 0
        needs_step_count = self._schedule_needs_step_count()
        steps: dict[str, int] = {}

        def factor(step: int) -> float:
            if step == 0:
                return 0.0 if has_warmup else 1.0
            if not steps:
                total = self.trainer.estimated_stepping_batches if needs_step_count else 0
                if math.isinf(total):  # e.g. max_epochs with a loader of unknown length
                    raise ValueError(f"scheduler {hp.scheduler!r} needs a known number of steps: set trainer.max_steps")
                steps["total"] = int(total)
                steps["warmup"] = hp.warmup_steps if hp.warmup_steps > 0 else math.ceil(hp.warmup_ratio * int(total))
            return _lr_factor(step, steps["warmup"], steps["total"], decay=decay)

        return factor


def _lr_factor(step: int, warmup_steps: int, total_steps: int, decay: bool) -> float:
    """Multiplier of the base learning rate after `step` optimizer steps.

    Linear warmup from 0 over warmup_steps, then constant, or (decay) linear down to 0 at total_steps:
    transformers' get_linear_schedule_with_warmup / get_constant_schedule_with_warmup.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if not decay:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _classification_metrics(num_classes: int) -> MetricCollection:
    """WA, UA (macro recall), macro F1, per-class recall and F1 (C,), and the confusion matrix (C, C)."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "uar": MulticlassRecall(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
            "recall_per_class": MulticlassRecall(num_classes, average=None),
            "f1_per_class": MulticlassF1Score(num_classes, average=None),
            "confusion": ConfusionMatrix(task="multiclass", num_classes=num_classes),
        }
    )
