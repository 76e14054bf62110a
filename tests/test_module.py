"""SERModule with a tiny random wav2vec 2.0 on synthetic waveforms: every test runs in seconds on CPU."""

from __future__ import annotations

import math
import shutil

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ser.data.ravdess import EMOTIONS
from ser.models import build_encoder, load_encoder_config
from ser.module import SERModule

from .helpers import TINY_ENCODER

# No stochastic layer skipping: tests that compare parameters step by step need every layer to train.
DETERMINISTIC = {"layerdrop": 0.0}
NUM_SAMPLES = 1600  # 0.1 s at 16 kHz: 79 frames from the tiny feature encoder


pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings(
        "ignore:.*(number of training batches|no `val_dataloader`|dataloader is not resumable).*"
    ),
    pytest.mark.filterwarnings("ignore:.*bf16-mixed is not supported by the model summary.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
]


def make_module(encoder_overrides: dict | None = None, **kwargs) -> SERModule:
    kwargs.setdefault("scheduler", "constant")
    return SERModule(
        encoder=None, pretrained=False, encoder_config={**TINY_ENCODER, **(encoder_overrides or {})}, **kwargs
    )


class ClipBatches(Dataset):
    """Random clips of varied length, zero-padded to NUM_SAMPLES, as the real collate gives them."""

    def __init__(self, n: int = 8, seed: int = 0, nan: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.waveforms = torch.randn(n, NUM_SAMPLES, generator=g)
        lengths = torch.randint(NUM_SAMPLES // 2, NUM_SAMPLES + 1, (n,), generator=g)
        lengths[0] = NUM_SAMPLES  # at least one clip fills the batch, as the longest of a real batch
        self.mask = torch.arange(NUM_SAMPLES) < lengths[:, None]
        self.waveforms = self.waveforms * self.mask
        if nan:
            self.waveforms[:] = float("nan")
        self.labels = torch.randint(0, len(EMOTIONS), (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {
            "waveforms": self.waveforms[i],
            "attention_mask": self.mask[i],
            "labels": self.labels[i],
            "index": torch.tensor(i),
        }


def loader(n: int = 8, batch_size: int = 4, **kwargs) -> DataLoader:
    return DataLoader(ClipBatches(n, **kwargs), batch_size=batch_size)


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **kwargs})


class Record(pl.Callback):
    """What each training step saw: the loss, the learning rates it used, and parameters after it."""

    def __init__(self, watch: dict[str, torch.nn.Parameter] | None = None):
        self.losses, self.lrs, self.after = [], [], []
        self.watch = watch or {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append([group["lr"] for group in trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.after.append({name: p.detach().clone() for name, p in self.watch.items()})


def snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def unchanged(before: list[torch.Tensor], params) -> bool:
    return all(torch.equal(b, p.detach()) for b, p in zip(before, params))


def feature_encoder(module: SERModule) -> list[torch.nn.Parameter]:
    return list(module.model.encoder.feature_extractor.parameters())


def transformer_layers(module: SERModule) -> list[torch.nn.Parameter]:
    return list(module.model.encoder.encoder.parameters())


# --- runs -------------------------------------------------------------------------------------


def test_fit_validate_test_fast_dev_run():
    module = make_module()
    run = pl.Trainer(
        fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    run.fit(module, train_dataloaders=loader(), val_dataloaders=loader(seed=1))
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/uar", "val/f1"} <= set(run.callback_metrics)
    assert module.val_confusion.shape == (8, 8) and int(module.val_confusion.sum()) == 4

    validated = run.validate(module, dataloaders=loader(seed=1))[0]
    assert {"val/loss", "val/acc", "val/uar", "val/f1"} <= set(validated)

    tested = run.test(module, dataloaders=loader(seed=2))[0]
    per_class = {f"test/{kind}/{emotion}" for kind in ("recall", "f1") for emotion in EMOTIONS}
    assert {"test/loss", "test/acc", "test/uar", "test/f1"} | per_class <= set(tested)
    confusion = module.test_confusion
    assert confusion.shape == (8, 8) and int(confusion.sum()) == 4  # fast_dev_run: one batch of 4
    assert tested["test/acc"] == pytest.approx(float(confusion.diag().sum() / confusion.sum()))
    # UA is the mean of the per-class recalls, over the classes seen (torchmetrics skips the others;
    # a real test set has every class)
    seen = [i for i in range(8) if confusion[i].sum() + confusion[:, i].sum() > 0]
    recalls = [tested[f"test/recall/{EMOTIONS[i]}"] for i in seen]
    assert tested["test/uar"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-6)


def test_bf16_mixed_on_cpu():
    module = make_module()
    run = pl.Trainer(
        fast_dev_run=True, accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False
    )
    run.fit(module, train_dataloaders=loader(), val_dataloaders=loader(seed=1))
    assert torch.isfinite(run.callback_metrics["train/loss"])
    assert next(module.parameters()).dtype == torch.float32  # bf16 only inside autocast


def test_overfits_one_batch():
    # No dropout or SpecAugment, so the same batch is the same problem at every step.
    no_noise = {
        "layerdrop": 0.0,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "mask_time_prob": 0.0,
    }
    torch.manual_seed(0)
    module = make_module(no_noise, lr=1e-3, freeze_feature_encoder=False)
    record = Record()
    batch = loader(n=4)  # four clips of four different emotions: one batch, seen 40 times
    trainer(max_steps=40, callbacks=[record]).fit(module, train_dataloaders=batch)
    assert len(record.losses) == 40
    assert record.losses[-1] < 0.25 * record.losses[0], record.losses
    # below ln 4 by far: the model tells the clips apart, it has not merely learnt which labels occur
    assert record.losses[-1] < 0.5 * math.log(4), record.losses


def test_predict_returns_probabilities_and_index():
    module = make_module()
    outputs = trainer().predict(module, dataloaders=loader(n=6, batch_size=4))
    probs = torch.cat([o["probs"] for o in outputs])
    assert probs.shape == (6, 8)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(6))
    assert torch.cat([o["index"] for o in outputs]).tolist() == list(range(6))


# --- checkpoints ------------------------------------------------------------------------------


def logits_of(module: SERModule, batch: dict) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(batch["waveforms"], batch["attention_mask"])


def test_checkpoint_is_self_describing(tmp_path):
    module = make_module(head_dropout=0.1, labels=EMOTIONS, sample_rate=16000, normalize=True)
    run = trainer(max_steps=2)
    run.fit(module, train_dataloaders=loader())
    path = tmp_path / "model.ckpt"
    run.save_checkpoint(path)

    hparams = torch.load(path, weights_only=True)["hyper_parameters"]  # plain data: safe to load
    assert hparams["pretrained"] is False and hparams["encoder"] is None
    assert hparams["encoder_config"] == module.model.encoder.config.to_dict()
    assert (
        hparams["encoder_config"]["num_hidden_layers"] == 2 and "layer_norm_eps" in hparams["encoder_config"]
    )  # full, not the overrides
    assert list(hparams["labels"]) == list(EMOTIONS)
    assert hparams["sample_rate"] == 16000 and hparams["normalize"] is True

    loaded = SERModule.load_from_checkpoint(path)
    batch = next(iter(loader(seed=3)))
    assert torch.equal(logits_of(loaded, batch), logits_of(module, batch))


def test_checkpoint_of_pretrained_encoder_loads_without_it(tmp_path):
    # A "pretrained" encoder in a local directory, deleted before loading the checkpoint: loading
    # must rebuild it from the config in the checkpoint, not look for the original.
    source = tmp_path / "encoder"
    config = load_encoder_config(None, TINY_ENCODER)
    torch.manual_seed(1)
    build_encoder(config, pretrained=False).save_pretrained(source)
    saved = build_encoder(load_encoder_config(str(source)), str(source), pretrained=True)

    module = SERModule(encoder=str(source), pretrained=True, scheduler="constant")
    assert all(m.training for m in module.modules())  # from_pretrained gives eval mode; training needs dropout
    assert all(
        torch.equal(a, b) for a, b in zip(module.model.encoder.state_dict().values(), saved.state_dict().values())
    )
    run = trainer(max_steps=1)
    run.fit(module, train_dataloaders=loader())
    path = tmp_path / "model.ckpt"
    run.save_checkpoint(path)
    shutil.rmtree(source)

    loaded = SERModule.load_from_checkpoint(path)
    assert loaded.hparams.encoder_config["_name_or_path"] == str(source)  # where it came from, for the record
    batch = next(iter(loader(seed=3)))
    assert torch.equal(logits_of(loaded, batch), logits_of(module, batch))


# --- freezing ---------------------------------------------------------------------------------


def test_freeze_encoder_steps_then_unfreeze():
    module = make_module(DETERMINISTIC, lr=1e-3, freeze_encoder_steps=2, freeze_feature_encoder=True)
    layers0, features0, head0 = (
        snapshot(transformer_layers(module)),
        snapshot(feature_encoder(module)),
        snapshot(module.model.head_parameters()),
    )
    watch = {f"layers.{i}": p for i, p in enumerate(transformer_layers(module))} | {
        f"features.{i}": p for i, p in enumerate(feature_encoder(module))
    }
    record = Record(watch)
    run = trainer(max_steps=4, callbacks=[record])
    run.fit(module, train_dataloaders=loader())

    def layers_after(step):
        return [record.after[step][f"layers.{i}"] for i in range(len(layers0))]

    assert not unchanged(head0, module.model.head_parameters())
    assert all(torch.equal(a, b) for a, b in zip(layers0, layers_after(0)))  # step 1: head only
    assert all(torch.equal(a, b) for a, b in zip(layers0, layers_after(1)))  # step 2: head only
    assert not all(torch.equal(a, b) for a, b in zip(layers0, layers_after(2)))  # step 3: encoder trains
    assert unchanged(features0, feature_encoder(module))  # the CNN feature encoder never trains
    assert all(p.requires_grad for p in transformer_layers(module)) and not any(
        p.requires_grad for p in feature_encoder(module)
    )


def test_freeze_encoder_steps_survives_resume(tmp_path):
    module = make_module(DETERMINISTIC, lr=1e-3, freeze_encoder_steps=2)
    run = trainer(max_steps=1)
    run.fit(module, train_dataloaders=loader())
    path = tmp_path / "step1.ckpt"
    run.save_checkpoint(path)

    resumed = make_module(DETERMINISTIC, lr=1e-3, freeze_encoder_steps=2)
    layers0 = snapshot(transformer_layers(module))  # the weights in the checkpoint
    record = Record({f"layers.{i}": p for i, p in enumerate(transformer_layers(resumed))})
    trainer(max_steps=3, callbacks=[record]).fit(resumed, train_dataloaders=loader(), ckpt_path=path)
    assert len(record.after) == 2  # steps 2 and 3
    assert all(torch.equal(a, record.after[0][f"layers.{i}"]) for i, a in enumerate(layers0))  # step 2: still frozen
    assert not all(torch.equal(a, record.after[1][f"layers.{i}"]) for i, a in enumerate(layers0))  # step 3: trains


def test_freeze_encoder_steps_under_ddp_needs_unused_parameters():
    module = make_module(freeze_encoder_steps=2)
    module.trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="ddp", logger=False)
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        module.on_fit_start()
    module.trainer = pl.Trainer(accelerator="cpu", devices=1, strategy="ddp_find_unused_parameters_true", logger=False)
    module.on_fit_start()


def test_feature_encoder_trains_when_not_frozen():
    module = make_module(DETERMINISTIC, lr=1e-3, freeze_feature_encoder=False)
    features0 = snapshot(feature_encoder(module))
    trainer(max_steps=1).fit(module, train_dataloaders=loader())
    assert not unchanged(features0, feature_encoder(module))


# --- optimizer and schedule -------------------------------------------------------------------


def test_encoder_lr_gives_two_param_groups():
    module = make_module(lr=1e-3, encoder_lr=1e-5)
    run = trainer(max_steps=1)
    run.fit(module, train_dataloaders=loader())
    groups = {group["name"]: group for group in run.optimizers[0].param_groups}
    assert set(groups) == {"encoder", "head"}
    assert groups["encoder"]["lr"] == pytest.approx(1e-5) and groups["head"]["lr"] == pytest.approx(1e-3)
    assert isinstance(run.optimizers[0], torch.optim.Adam)
    assert groups["encoder"]["betas"] == (0.9, 0.999) and groups["encoder"]["eps"] == 1e-8

    in_groups = {id(p) for group in groups.values() for p in group["params"]}
    frozen = {id(p) for p in feature_encoder(module)}
    assert in_groups == {id(p) for p in module.parameters()} - frozen  # every trainable parameter, once
    assert sum(len(group["params"]) for group in groups.values()) == len(in_groups)


def test_encoder_lr_defaults_to_lr_and_adamw():
    module = make_module(lr=3e-4, optimizer="adamw", weight_decay=0.01)
    run = trainer(max_steps=1)
    run.fit(module, train_dataloaders=loader())
    optimizer = run.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(3e-4, 0.01), (3e-4, 0.01)]


@pytest.mark.parametrize(
    ("scheduler", "warmup", "expected"),
    [
        # max_steps=6 steps; the factor of step k is what step k+1 trains with
        ("linear", {"warmup_steps": 2}, [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]),
        ("linear", {"warmup_ratio": 0.5}, [0.0, 1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),
        ("linear", {}, [1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6]),
        ("constant", {"warmup_steps": 2}, [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_schedule(scheduler, warmup, expected):
    module = make_module(lr=1e-3, encoder_lr=1e-4, scheduler=scheduler, **warmup)
    record = Record()
    run = trainer(max_steps=6, callbacks=[record])
    run.fit(module, train_dataloaders=loader(n=24))
    assert [lrs[0] for lrs in record.lrs] == pytest.approx([1e-4 * f for f in expected])  # encoder
    assert [lrs[1] for lrs in record.lrs] == pytest.approx([1e-3 * f for f in expected])  # head
    assert run.lr_scheduler_configs[0].interval == "step"


def test_linear_schedule_counts_optimizer_steps_with_accumulation():
    module = make_module(lr=1e-3, scheduler="linear")
    record = Record()
    run = trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[record])
    run.fit(module, train_dataloaders=loader(n=16, batch_size=2))  # 8 batches = 4 optimizer steps
    assert run.global_step == 4
    assert [lrs[1] for lrs in record.lrs] == pytest.approx([1e-3 * f for f in (1, 1, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25)])


@pytest.mark.parametrize(("argument", "names"), [("scheduler", "linear, constant"), ("optimizer", "adam, adamw")])
def test_unknown_names_are_refused(argument, names):
    with pytest.raises(ValueError, match=names):
        make_module(**{argument: "nope"})


# --- loss ---------------------------------------------------------------------------------------


def test_nan_loss_raises():
    module = make_module()
    with pytest.raises(
        FloatingPointError, match=r"^loss became nan at step 0 .*lower optimizer.lr, or use trainer.precision=32"
    ):
        trainer(max_steps=2).fit(module, train_dataloaders=loader(nan=True))


def test_class_weights_and_label_smoothing():
    weights = [1.0, 2.0, 1.0, 0.5, 1.0, 1.0, 3.0, 1.0]
    module = make_module(class_weights=weights, label_smoothing=0.1)
    logits, labels = torch.randn(5, 8), torch.tensor([0, 1, 6, 6, 3])
    expected = F.cross_entropy(logits, labels, weight=torch.tensor(weights), label_smoothing=0.1)
    assert torch.allclose(module.loss(logits, labels), expected)
    assert not torch.allclose(module.loss(logits, labels), F.cross_entropy(logits, labels))
    assert "class_weights" not in module.state_dict()  # rebuilt from hparams, not stored twice

    run = pl.Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    run.fit(module, train_dataloaders=loader(), val_dataloaders=loader(seed=1))
    assert torch.isfinite(run.callback_metrics["val/loss"])


def test_class_weights_need_one_per_label():
    with pytest.raises(ValueError, match="one weight per label"):
        make_module(class_weights=[1.0, 2.0])
