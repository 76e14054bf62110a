"""Benchmark data preparation: cold and warm preparation of a full 24-actor corpus, and padding.

    python benchmarks/prepare.py [--root DIR] [--workers N]

Without ``--root`` a synthetic 24-actor RAVDESS-format corpus (1440 clips) is made first (``ser synth``).
Cold: an empty cache, every clip decoded and resampled. Warm: the same call again, reading the index.
Both are timed as a function call and as the `ser prepare` command (a new process, imports included).
Padding: the fraction of padded samples per epoch with length-bucketed batches against random batches
of the same size, on the real clip lengths.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import write_section

from ser.data.batching import LengthBucketBatchSampler, padding_fraction
from ser.data.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="corpus to prepare (default: a fresh synthetic 24-actor corpus)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--warm-repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root
        if root is None:
            from ser.data.synth import synthesize_corpus

            root = synthesize_corpus(Path(scratch) / "ravdess-synth", actors=24, seed=0)
        cache = Path(scratch) / "cache"

        start = time.perf_counter()
        corpus = prepare(root, cache, workers=args.workers)
        cold = time.perf_counter() - start
        warm_times = []
        for _ in range(args.warm_repeats):
            start = time.perf_counter()
            warm = prepare(root, cache, workers=args.workers)
            warm_times.append(time.perf_counter() - start)
        warm_time = statistics.median(warm_times)
        assert warm.path == corpus.path

        # the same through the command line, start-up of the `ser` process included
        command = [
            sys.executable,
            "-m",
            "ser.cli",
            "-q",
            "prepare",
            f"data.root={root}",
            f"data.cache_dir={Path(scratch) / 'cli-cache'}",
        ]
        command_times = []
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            command_times.append(time.perf_counter() - start)

        lengths = corpus.lengths()
        rows = []
        for batch_size in (4, 8, 16):
            bucketed = padding_fraction(
                lengths, list(LengthBucketBatchSampler(lengths, batch_size, shuffle=True, seed=0))
            )
            order = np.random.default_rng(0).permutation(len(lengths))
            random = padding_fraction(lengths, [order[i : i + batch_size] for i in range(0, len(order), batch_size)])
            rows.append(f"| {batch_size} | {random:.1%} | {bucketed:.1%} |")

    summary = corpus.summary()
    body = (
        f"`python benchmarks/prepare.py` on {summary['clips']} clips ({summary['hours']:.2f} h of audio, "
        f"{len(summary['actors'])} actors), {'synthetic corpus' if args.root is None else args.root}.\n"
        f"""
| step | seconds |
| --- | --- |
| cold preparation (decode, resample to 16 kHz, normalise, write the cache) | {cold:.2f} |
| warm preparation (median of {args.warm_repeats}) | {warm_time:.3f} |
| cold / warm | {cold / warm_time:.0f}x |
| `ser prepare` command, cold (process start-up included) | {command_times[0]:.2f} |
| `ser prepare` command, warm | {command_times[1]:.2f} |
| command cold / warm | {command_times[0] / command_times[1]:.0f}x |

Padded samples per training epoch (bucketed: `LengthBucketBatchSampler`, 32 batches per bucket):

| batch size | random batches | length-bucketed batches |
| --- | --- | --- |
{chr(10).join(rows)}
"""
    )
    print(body)
    print(f"written to {write_section('prepare', body)}")


if __name__ == "__main__":
    main()
