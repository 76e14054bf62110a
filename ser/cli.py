"""The ``ser`` command line.

    ser synth OUT [--actors N] [--seed S]     write a synthetic RAVDESS-format corpus
    ser prepare data.root=PATH [data.*=...]   preprocess a corpus into the cache and summarise it
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message already says what to do: shown as one line, without a traceback."""
    from .data.audio import AudioError
    from .data.corpus import CorpusError
    from .data.download import DownloadError
    from .data.splits import SplitError
    from .models.encoder import EncoderError

    return (CorpusError, DownloadError, SplitError, EncoderError, AudioError, FloatingPointError)


@contextlib.contextmanager
def exit_on_user_error():
    try:
        yield
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def compose(overrides: list[str]):
    """The project's Hydra config with ``overrides``, outside of ``@hydra.main``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from . import config as _schemas  # noqa: F401  (registers the structured config schemas)

    if not CONF_DIR.is_dir():
        raise SystemExit(f"error: no config directory at {CONF_DIR}; install ser from its source tree with `pip install -e .`")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synth import synthesize_corpus

    out = synthesize_corpus(args.out, actors=args.actors, seed=args.seed, progress=not args.quiet)
    print(f"synthetic RAVDESS-format corpus ({args.actors} actors) in {out}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from .data.prepare import PrepareSettings, prepare

    cfg = compose(args.overrides).data
    if cfg.synthesize_actors:
        from .data.synth import synthesize_corpus

        synthesize_corpus(cfg.root, actors=cfg.synthesize_actors, seed=0, progress=not args.quiet)
    settings = PrepareSettings(sample_rate=cfg.sample_rate, normalize=cfg.normalize)
    corpus = prepare(cfg.root, cfg.cache_dir, settings, strict=cfg.strict, download=cfg.download, progress=not args.quiet)
    summary = corpus.summary()

    console = Console()
    console.print(f"[bold]{summary['clips']} clips[/], {len(summary['emotions'])} emotions, {len(summary['actors'])} actors, "
                  f"{summary['hours']:.2f} h of audio, from {summary['source']}")
    emotions = Table("emotion", "clips", title="clips per emotion")
    for emotion, count in summary["emotions"].items():
        emotions.add_row(emotion, str(count))
    actors = Table("actor", "gender", "clips", title="clips per actor")
    for actor, count in summary["actors"].items():
        actors.add_row(f"{actor:02d}", "male" if actor % 2 else "female", str(count))
    console.print(emotions, actors)
    if summary["excluded"]:
        console.print(f"{summary['excluded']} clips of another modality or vocal channel were left out")
    if corpus.skipped:
        skipped = Table("file", "reason", title=f"{len(corpus.skipped)} file(s) skipped", title_style="bold red")
        for row in corpus.skipped:
            skipped.add_row(row["location"], row["reason"])
        console.print(skipped)
    else:
        console.print("no file skipped")
    console.print(f"cache: {summary['cache']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description="Speech emotion recognition on RAVDESS.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a synthetic RAVDESS-format corpus (eSpeak NG voices)")
    synth.add_argument("out", type=Path, help="output directory")
    synth.add_argument("--actors", type=int, default=24, help="actors 1..N (default 24: 1440 clips)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=cmd_synth)

    prep = commands.add_parser("prepare", help="decode, resample and cache a corpus; print its summary")
    prep.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.root=PATH data.strict=true")
    prep.set_defaults(run=cmd_prepare)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_user_error():
        args.run(args)


if __name__ == "__main__":
    main()
