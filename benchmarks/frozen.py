"""Benchmark frozen-encoder training: the head trained on the audio against the head trained on cached features.

    python benchmarks/frozen.py [--encoder-config tiny|base|large] [--root DIR] [--steps N] [--batch-size B]
                                [--autocast bf16|fp16|none] [--trim-db DB] [--quick] [--output FILE]

One run, on one corpus (by default a fresh synthetic 24-actor corpus, 1440 clips), with one encoder built
from ``--encoder-config`` with random weights (default ``base``: wav2vec2-base's shapes) and kept frozen:

- audio: ``SpeechClassifier`` (head ``hf``: projector to 256, masked mean, classifier) trained for
  ``--steps`` Adam steps with the encoder frozen and in eval mode, each step running the encoder on the
  batch's audio, as a frozen-encoder run without a cache does;
- cached: the encoder's output extracted once into the feature cache (:mod:`ser.features`; the
  extraction is timed, and the cache's size measured), then the same head, from the same initial
  weights, trained on the same batches in the same order, reading frames from the cache
  (``SpeechClassifier.forward_frames``). Being fast, this loop is timed over several repeats (the median
  counts); its first repeat gives the results compared with the audio side's: the loss at every step,
  and the trained head's weights (Adam moves a weight by about the learning rate whatever its gradient's
  size, so a weight whose gradient is near zero may differ by about one step's size).
- probe: ``ser.probe.run_probe`` over every layer and every EmoBox fold of the corpus (13 layers x 6
  folds for ``base``), on the utterance means that the extraction above already stored; its time plus
  the extraction's is what a first ``ser probe`` of the encoder costs.

Throughput is clips per second of the training loop (batching, forward, backward, optimizer step).
The same batches are drawn from the training part of a random stratified 80/20 split; whole clips,
no crops. Targets: the cached side at 50x the audio side's throughput or more, and a full probe
(extraction and every probe) under 15 minutes.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from report import BENCHMARKS_MD, ENCODER_CONFIGS, command_line, write_section

THROUGHPUT_TARGET = 50.0
PROBE_TARGET_SECONDS = 15 * 60
CACHED_REPEATS = 5
LEARNING_RATE = 1e-3


def encoder_config(name: str) -> dict:
    """The encoder config ``name`` of :data:`report.ENCODER_CONFIGS`; ``tiny`` is the demo's (conf/model/tiny.yaml)."""
    from omegaconf import OmegaConf

    if ENCODER_CONFIGS[name] is not None:
        return dict(ENCODER_CONFIGS[name])
    tiny = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "model" / "tiny.yaml")
    return OmegaConf.to_container(tiny.encoder_config)


def fixed_batches(train: np.ndarray, steps: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """``steps`` batches of clip indices drawn from ``train``, each an epoch-style permutation's slice."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(train) for _ in range(steps * batch_size // len(train) + 1)])
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def padded(corpus, batch: np.ndarray):
    """Waveforms (B, T) and attention mask (B, T) of the clips ``batch``, as the training loader pads them."""
    import torch

    from ser.data.batching import collate

    items = [{"waveform": torch.from_numpy(np.array(corpus.waveform(int(i)))), "label": 0, "index": i} for i in batch]
    batch = collate(items)
    return batch["waveforms"], batch["attention_mask"]


def train_head(classifier, batches, labels, logits_of) -> tuple[float, list[float], dict]:
    """Train the head of a copy of ``classifier`` on ``batches``; returns seconds, losses and the head's weights."""
    import torch

    model = copy.deepcopy(classifier)
    model.set_encoder_trainable(False)
    model.eval()  # a frozen encoder runs without dropout or masking; the hf head has no dropout
    optimizer = torch.optim.Adam(model.head_parameters(), lr=LEARNING_RATE)
    losses = []
    start = time.perf_counter()
    for batch in batches:
        logits = logits_of(model, batch)
        loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("encoder.")}
    return seconds, losses, weights


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder-config", choices=list(ENCODER_CONFIGS), help="encoder sizes (default base)")
    parser.add_argument("--root", type=Path, help="a RAVDESS-format corpus (default: a fresh synthetic one)")
    parser.add_argument("--steps", type=int, help="optimizer steps per side (default 16)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--autocast", choices=("bf16", "fp16", "none"), help="extraction precision (default: float32 on CPU)"
    )
    parser.add_argument("--trim-db", type=float, help="data.trim_db for the prepared corpus (default: none)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the tiny encoder, 2 actors, 4 steps")
    parser.add_argument(
        "--output", type=Path, default=BENCHMARKS_MD, help="the benchmarks file to write (default: BENCHMARKS.md)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from ser.data.features import FrameDataset, cache_size, collate_frames
    from ser.data.prepare import PrepareSettings, prepare
    from ser.data.splits import make_split
    from ser.data.synth import synthesize_corpus
    from ser.features import extract_features
    from ser.models import SpeechClassifier, build_encoder, load_encoder_config
    from ser.probe import layer_summary, run_probe

    load_at_start = os.getloadavg()[0]  # the machine may be shared: the figures depend on what else runs
    encoder_name = args.encoder_config or ("tiny" if args.quick else "base")
    steps = args.steps or (4 if args.quick else 16)
    with tempfile.TemporaryDirectory(prefix="ser-bench-frozen-") as scratch_dir:
        scratch = Path(scratch_dir)
        root = args.root or synthesize_corpus(scratch / "ravdess-synth", actors=2 if args.quick else 24, seed=0)
        corpus = prepare(root, scratch / "cache", PrepareSettings(trim_db=args.trim_db), progress=False)
        audio_hours = float(corpus.lengths().sum() / corpus.sample_rate / 3600)
        labels = np.array([clip["label"] for clip in corpus.clips])
        train = make_split(corpus.clips, "random", seed=42)["train"]
        batches = fixed_batches(train, steps, args.batch_size)

        torch.manual_seed(0)
        encoder = build_encoder(load_encoder_config(None, encoder_config(encoder_name)), pretrained=False).eval()
        classifier = SpeechClassifier(encoder, num_labels=8, projector_dim=256)
        parameters = sum(p.numel() for p in encoder.parameters())

        print(f"audio side: {steps} steps of {args.batch_size} clips, encoder {encoder_name} frozen", flush=True)
        audio_seconds, audio_losses, audio_weights = train_head(
            classifier, batches, labels, lambda model, batch: model(*padded(corpus, batch))
        )

        print("extracting features", flush=True)
        start = time.perf_counter()
        features = extract_features(encoder, corpus, scratch / "cache", autocast=args.autocast, progress=False)
        extraction_seconds = time.perf_counter() - start
        size = cache_size(features)
        frame_bytes = (features.path / "frames.npy").stat().st_size
        dataset = FrameDataset(features, np.arange(len(corpus.clips)))

        def cached_logits(model, batch):
            frames = collate_frames([dataset[int(i)] for i in batch])
            return model.forward_frames(frames["frames"], frames["mask"])

        # One intra-op thread for the head: its tensors are small, and on a loaded machine the threads'
        # synchronisation costs more than the work they share. The audio side keeps every thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cached_runs = [train_head(classifier, batches, labels, cached_logits) for _ in range(CACHED_REPEATS)]
        torch.set_num_threads(threads)
        cached_seconds = statistics.median(run[0] for run in cached_runs)
        _, cached_losses, cached_weights = cached_runs[0]

        print("probing every layer on every fold", flush=True)
        probe = run_probe(encoder, corpus, scratch / "cache", scratch / "probe", frames="output", progress=False)
        summary = layer_summary(probe.rows)

    load_at_end = os.getloadavg()[0]
    clips = steps * args.batch_size
    audio_rate, cached_rate = clips / audio_seconds, clips / cached_seconds
    speedup = cached_rate / audio_rate
    loss_difference = max(abs(a - b) for a, b in zip(audio_losses, cached_losses))
    weight_difference = max(float((audio_weights[k] - cached_weights[k]).abs().max()) for k in audio_weights)
    folds = sorted({row["fold"] for row in probe.rows})
    probe_total = probe.extraction_seconds + extraction_seconds + probe.probe_seconds
    probe_verdict = "met" if probe_total < PROBE_TARGET_SECONDS else "not met"
    best = summary[probe.best_layer]

    def mib(size: float) -> str:
        return f"{size / 2**20:.1f} MiB"

    corpus_name = "synthetic corpus of" if args.root is None else f"{root},"
    trim = f", trim_db {args.trim_db:g}" if args.trim_db is not None else ""
    dim = features.meta["hidden_size"]
    intro = (
        f"`{command_line('frozen.py')}`: encoder `{encoder_name}` ({parameters / 1e6:.1f} M parameters, random "
        f"weights, frozen), {corpus_name} {len(corpus.clips)} clips ({audio_hours:.2f} h of audio{trim}). Both sides "
        f"train the same head (hf: projector to 256, masked mean, classifier; Adam lr {LEARNING_RATE:g}) from the "
        f"same initial weights on the same {steps} batches of {args.batch_size} whole clips, drawn from the training "
        f"part of a random 80/20 split. The cached side's time is the median of {CACHED_REPEATS} repeats, on one "
        f"intra-op thread (the audio side on {torch.get_num_threads()}). "
        f"Extraction autocast: {args.autocast or 'none (float32)'}; frames stored as float16. "
        f"Load average (1 min) {load_at_start:.2f} at the start and {load_at_end:.2f} at the end, on "
        f"{len(os.sched_getaffinity(0))} usable cores."
    )
    speedup_verdict = "met" if speedup >= THROUGHPUT_TARGET else "not met"
    rows = [
        (
            "speed-up of training on cached features",
            f"{speedup:.0f}x (target {THROUGHPUT_TARGET:.0f}x: {speedup_verdict})",
        ),
        ("largest loss difference over the steps", f"{loss_difference:.2e}"),
        ("largest difference of the trained head's weights", f"{weight_difference:.2e}"),
        ("extraction of the encoder's output and every layer's utterance means (s)", f"{extraction_seconds:.1f}"),
        ("extraction rate (seconds of audio per second)", f"{audio_hours * 3600 / extraction_seconds:.1f}"),
        (f"cache size: frames {len(features.all_frames)} x {len(features.layers)} x {dim} float16", mib(frame_bytes)),
        (f"cache size: all files, with utterance means {len(corpus.clips)} x {features.num_layers} x {dim}", mib(size)),
        (
            f"probe: {features.num_layers} layers x {len(folds)} folds = {len(probe.rows)} linear probes (s)",
            f"{probe.probe_seconds:.1f}",
        ),
        (
            "full probe: extraction + probes (s)",
            f"{probe_total:.1f} (target under {PROBE_TARGET_SECONDS} s: {probe_verdict})",
        ),
        (
            "best layer of the probe (UA, mean ± std over folds)",
            f"{probe.best_layer} ({best['mean']:.3f} ± {best['std']:.3f})",
        ),
    ]
    body = "\n".join(
        [
            intro,
            "",
            "| | frozen encoder on the audio | head on cached features |",
            "|---|---|---|",
            f"| training throughput (clips/s) | {audio_rate:.2f} | {cached_rate:.1f} |",
            f"| seconds for {steps} steps | {audio_seconds:.2f} | {cached_seconds:.4f} |",
            f"| loss at the last step | {audio_losses[-1]:.4f} | {cached_losses[-1]:.4f} |",
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {label} | {value} |" for label, value in rows),
        ]
    )
    print(body)
    write_section("frozen", body, args.output)
    print(f"section `frozen` written to {args.output}")


if __name__ == "__main__":
    main()
