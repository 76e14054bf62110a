"""The ``ser`` command line.

ser synth OUT [--format F] [--speakers N]  write a stand-in of a corpus in its real layout (default RAVDESS)
ser prepare [data=NAME] data.root=PATH    preprocess a corpus into the cache and summarise it
ser predict MODEL PATH... [--json]        emotions of audio files (MODEL: .ckpt, .onnx, Hugging Face model)
ser predict MODEL PATH... --segments      emotions over time: each speech segment of long recordings
ser demo MODEL [--port P] [--share]       a Gradio page and API for a model
ser evaluate MODEL [data.*=...] [--stage] WA / UA / F1 of a model on a split, with figures
ser export CKPT OUT [--format hf|onnx]    a checkpoint as a Hugging Face model or an ONNX file
ser summarize SWEEP_DIR [--metric M]      mean ± std of a multirun's metrics (folds, sweeps)
ser probe ENCODER [data.*=...] [--folds]  UA of a linear probe on each layer of an encoder, per fold
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import exit_on_user_error


def cmd_synth(args: argparse.Namespace) -> None:
    if args.format == "ravdess" and args.speakers is None:
        from .data.synth import synthesize_corpus

        out = synthesize_corpus(args.out, actors=args.actors, seed=args.seed, progress=not args.quiet)
        print(f"synthetic RAVDESS-format corpus ({args.actors} actors) in {out}")
        return
    from .data.corpora.stand_ins import DEFAULT_SPEAKERS, write_stand_in

    speakers = args.speakers if args.speakers is not None else DEFAULT_SPEAKERS[args.format]
    out = write_stand_in(
        args.out, args.format, speakers=speakers, seed=args.seed, layout=args.layout, progress=not args.quiet
    )
    print(f"stand-in of {args.format} ({speakers} speakers, its real layout) in {out}")
    print(f"  prepare it:  ser prepare data={args.format} data.root={out}")


def cmd_prepare(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from .config import compose_data
    from .data.prepare import PrepareSettings, prepare

    cfg = compose_data(args.overrides)
    if cfg.corpus != "ravdess" or cfg.labels or cfg.label_map or cfg.options:
        from .data.datamodule import RavdessDataModule  # a plug-in's corpus: the data module knows how

        corpus = RavdessDataModule.from_config(cfg, seed=0, progress=not args.quiet).load_corpus()
    else:
        if cfg.synthesize_actors:
            from .data.synth import synthesize_unless_present  # imports torch: only when asked to synthesise

            synthesize_unless_present(cfg.root, actors=cfg.synthesize_actors, progress=not args.quiet)
        settings = PrepareSettings(sample_rate=cfg.sample_rate, normalize=cfg.normalize, trim_db=cfg.trim_db)
        corpus = prepare(
            cfg.root, cfg.cache_dir, settings, strict=cfg.strict, download=cfg.download, progress=not args.quiet
        )
    summary = corpus.summary()

    # soft_wrap and markup=False wherever a path is printed: a path is never cut, folded or wrapped,
    # even when the output goes to a file (where rich would wrap at 80 columns), and brackets in it stay.
    console = Console(soft_wrap=True)
    # RAVDESS's words (emotions, actors) for RAVDESS; labels and speakers for any other corpus
    ravdess = summary["corpus"] == "ravdess"
    label_word, speaker_word = ("emotion", "actor") if ravdess else ("label", "speaker")
    console.print(
        f"{summary['clips']} clips, {len(summary['labels'])} {label_word}s, {len(summary['speakers'])} "
        f"{speaker_word}s, {summary['hours']:.2f} h of audio, from {summary['source']}"
        + ("" if ravdess else f" ({summary['corpus']})"),
        markup=False,
        highlight=False,
    )
    emotions = Table(label_word, "clips", title=f"clips per {label_word}")
    for label in summary["labels"]:
        emotions.add_row(label, str(summary["emotions"].get(label, 0)))
    speakers = Table(speaker_word, "gender", "clips", title=f"clips per {speaker_word}")
    for speaker, entry in summary["speakers"].items():
        speakers.add_row(speaker, entry["gender"], str(entry["clips"]))
    console.print(emotions, speakers)
    if summary["excluded"]:
        console.print(f"{summary['excluded']} clips of another modality or vocal channel were left out")
    for label, count in summary["not_kept"].items():
        console.print(f"{count} clips labelled {label} left out: not among data.labels", markup=False)
    for note in summary["notes"]:
        console.print(note, markup=False, highlight=False)
    if corpus.skipped:
        console.print(f"[bold red]{len(corpus.skipped)} file(s) skipped:[/]")
        for row in corpus.skipped:
            console.print(f"  {row['location']}: {row['reason']}", markup=False, highlight=False)
        console.print(f"the skipped files and their reasons: {corpus.skipped_file}", markup=False, highlight=False)
    else:
        console.print("no file skipped")
    console.print(f"cache: {summary['cache']}", markup=False, highlight=False)


def cmd_predict(args: argparse.Namespace) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    from .inference import iter_predict, load_model

    if args.segments or segment_options_given(args):
        cmd_predict_segments(args)
        return
    model = load_model(args.model, device=args.device)
    predictions = []
    for prediction in iter_predict(  # JSON lines are written as the files are scored
        model,
        args.paths,
        window_seconds=args.window,
        hop_seconds=args.hop,
        batch_size=args.batch_size,
        progress=not args.quiet,
        threads=args.threads,
    ):
        if args.json:
            print(json.dumps(prediction.to_dict()), flush=True)
            if prediction.error is None:
                continue  # printed: only failures are kept, for the summary on stderr
        predictions.append(prediction)
    if not args.json:
        table = Table(title=f"{model.name}: {len(predictions)} file(s)")
        table.add_column("file", overflow="fold")
        for column in ("emotion", "probability", "windows"):
            table.add_column(column)
        for p in predictions:
            if p.error is None:
                table.add_row(p.path, p.label, f"{p.probability:.3f}", str(len(p.windows)))
            else:
                table.add_row(p.path, "[red]failed[/]", "", "")
        console = Console()
        if not console.is_terminal:
            # rich lays a table out at 80 columns in a file or a pipe, folding long paths across lines:
            # make it as wide as its longest row instead, so every path stays whole on its line
            natural = Console(width=1 << 20).measure(table).maximum
            console = Console(width=max(console.width, natural))
        console.print(table)
    failed = [p for p in predictions if p.error is not None]
    for p in failed:
        print(f"error: {p.path}: {p.error}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


SEGMENT_OPTIONS = ("csv", "plot", "min_speech", "min_silence", "pad", "merge")


def add_segment_options(pred: argparse.ArgumentParser) -> None:
    """``ser predict --segments`` and its settings (see :mod:`ser.segments`)."""
    group = pred.add_argument_group("emotions over time (--segments)")
    group.add_argument(
        "--segments",
        action="store_true",
        help="find the speech with a voice activity detector (silero-vad) and score each segment",
    )
    group.add_argument("--csv", action="store_true", help="segments as CSV on stdout, one row per segment")
    group.add_argument("--plot", type=Path, metavar="PNG", help="draw the emotions against time into this image")
    group.add_argument(
        "--min-speech", type=float, default=0.25, metavar="SECONDS", help="drop shorter speech (default 0.25)"
    )
    group.add_argument(
        "--min-silence",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="a shorter pause does not end a segment (default 0.5)",
    )
    group.add_argument(
        "--pad", type=float, default=0.1, metavar="SECONDS", help="audio kept either side of speech (default 0.1)"
    )
    group.add_argument(
        "--merge", action="store_true", help="join neighbouring segments of the same emotion into one row"
    )


def segment_options_given(args: argparse.Namespace) -> bool:
    defaults = build_parser().parse_args(["predict", "M", "P"])
    given = [name for name in SEGMENT_OPTIONS if getattr(args, name) != getattr(defaults, name)]
    if given and not args.segments:
        names = ", ".join("--" + name.replace("_", "-") for name in given)
        raise SystemExit(f"error: {names} work(s) with --segments only: add --segments")
    return bool(given)


def cmd_predict_segments(args: argparse.Namespace) -> None:
    import json

    from .inference import load_model
    from .segments import SegmentSettings, csv_header, csv_row, plot_timeline, segment_files

    if args.json and args.csv:
        raise SystemExit("error: --json and --csv both print rows: choose one")
    settings = SegmentSettings(min_speech=args.min_speech, min_silence=args.min_silence, pad=args.pad, merge=args.merge)
    model = load_model(args.model, device=args.device)
    rows = segment_files(
        model,
        args.paths,
        settings,
        window_seconds=args.window,
        hop_seconds=args.hop,
        batch_size=args.batch_size,
        progress=not args.quiet,
        threads=args.threads,
    )
    segments = []
    if args.csv:
        print(csv_header(model.labels), flush=True)
    for segment in rows:  # printed as they come: a crash keeps what was done
        segments.append(segment)
        if args.json:
            print(json.dumps(segment.to_dict()), flush=True)
        elif args.csv:
            print(csv_row(segment, model.labels), flush=True)
    if not args.json and not args.csv:
        print_segment_table(segments, model.name)
    if args.plot is not None:
        from .atomic import save_figure

        figure = plot_timeline(segments, model.labels, title=f"{model.name}: emotions over time")
        print(f"timeline written to {save_figure(figure, args.plot, dpi=120)}", file=sys.stderr)
    failed = [s for s in segments if s.error is not None]
    for s in failed:
        where = "" if s.start is None else f" {s.start:.2f}-{s.end:.2f} s"
        print(f"error: {s.path}{where}: {s.error}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


def print_segment_table(segments, model_name: str) -> None:
    """A table on a terminal; plain tab-separated lines when piped, so paths are never wrapped."""
    header = ("file", "start", "end", "emotion", "probability")
    cells = [
        (s.path, f"{s.start:.2f}", f"{s.end:.2f}", s.label, f"{s.probability:.3f}") for s in segments if s.error is None
    ]
    if not sys.stdout.isatty():
        for row in (header, *cells):
            print("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*header, title=f"{model_name}: {len(cells)} speech segment(s)")
    for row in cells:
        table.add_row(*row)
    Console().print(table)


def add_demo_command(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="a Gradio page and API for a model",
        description="Serve a page where anyone can upload or record speech and see the model's emotions, "
        "with API endpoints /predict and /segments (pip install -e '.[demo]').",
    )
    demo.add_argument(
        "model", help="a .ckpt checkpoint, an .onnx file, or a Hugging Face model (directory or Hub name)"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    demo.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    demo.add_argument("--examples", type=Path, metavar="DIR", help="audio files to offer as examples")
    demo.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="longer uploads are refused (default 600)",
    )
    demo.add_argument("--device", default=None, help="torch device for the model, e.g. cuda (default cpu)")
    demo.set_defaults(run=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        share=args.share,
        examples=args.examples,
        max_seconds=args.max_seconds,
        device=args.device,
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from .evaluate import evaluate

    metrics = evaluate(
        args.model,
        args.overrides,
        out_dir=args.out,
        stage=args.stage,
        batch_size=args.batch_size,
        progress=not args.quiet,
        perturb=args.perturb or (),
    )
    stage = metrics["stage"]
    console = Console(soft_wrap=True)  # the model's and the output folder's paths stay whole on their lines
    console.print(f"[bold]{metrics['model']}[/] on {metrics['clips']} {stage} clips, {metrics['protocol']}")
    console.print(metrics["scoring"], markup=False, highlight=False)
    console.print(
        f"WA (accuracy) {metrics[f'{stage}/acc']:.4f}   UA (macro recall) {metrics[f'{stage}/uar']:.4f}   "
        f"macro F1 {metrics[f'{stage}/f1']:.4f}"
    )
    if metrics.get("perturbed"):
        robustness = Table("audio", "WA", "UA", "F1", "UA drop", title="clean and perturbed")
        robustness.add_row(
            "clean", *(f"{metrics[f'{stage}/{name}']:.4f}" for name in ("acc", "uar", "f1")), "", end_section=True
        )
        for label, values in metrics["perturbed"].items():
            robustness.add_row(
                label, *(f"{values[name]:.4f}" for name in ("acc", "uar", "f1")), f"{values['drop/uar']:+.4f}"
            )
        console.print(robustness)
    table = Table("emotion", "clips", "recall", "F1", title="per class")
    for label in metrics["labels"]:
        if metrics["support"][label]:
            table.add_row(
                label,
                str(metrics["support"][label]),
                f"{metrics[f'{stage}/recall/{label}']:.3f}",
                f"{metrics[f'{stage}/f1/{label}']:.3f}",
            )
    console.print(table)
    console.print(f"metrics.json, confusion_matrix.png, per_class.png and predictions.csv in {metrics['out_dir']}")


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_hf, export_onnx

    if args.format == "onnx":
        out = export_onnx(args.checkpoint, args.out, overwrite=args.overwrite)
        print(f"ONNX model written to {out}")
        print(f"  score files:   ser predict {out} clip.wav")
        print(
            "  in Python:     from ser.onnx_runtime import OnnxClassifier; "
            f"OnnxClassifier('{out}')(waveforms, attention_mask)"
        )
    else:
        out = export_hf(args.checkpoint, args.out, overwrite=args.overwrite)
        print(f"Hugging Face model (weights, config, feature extractor) written to {out}")
        print(f"  score files:   ser predict {out} clip.wav")
        print(f"  evaluate:      ser evaluate {out} data.root=PATH")
        print(
            f"  transformers:  pipeline('audio-classification', model='{out}')"
            "({'raw': waveform, 'sampling_rate': 16000})"
        )


def cmd_summarize(args: argparse.Namespace) -> None:
    from .summarize import DEFAULT_METRICS, summarize

    summarize(args.sweep_dir, metrics=tuple(args.metrics or DEFAULT_METRICS))  # prints the table and the files


def cmd_probe(args: argparse.Namespace) -> None:
    from datetime import datetime

    import torch

    from .config import ConfigError, compose_data
    from .data.prepare import PrepareSettings, prepare
    from .probe import layer_summary, load_probe_encoder, run_probe

    wrong = [o for o in args.overrides if not o.startswith("data.") or "=" not in o]
    if wrong:
        raise ConfigError(f"ser probe takes data.KEY=VALUE overrides only, not {' '.join(wrong)}")
    cfg = compose_data(args.overrides)
    try:
        folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    except ValueError:
        raise ConfigError(f"--folds {args.folds} is not a list of fold numbers such as 1,2,3") from None
    out = args.out or Path("outputs") / f"probe-{datetime.now():%Y-%m-%d_%H-%M-%S}"
    encoder, preprocessing = load_probe_encoder(args.encoder)
    encoder.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.synthesize_actors:
        from .data.synth import synthesize_unless_present

        synthesize_unless_present(cfg.root, actors=cfg.synthesize_actors, progress=not args.quiet)
    settings = PrepareSettings(
        sample_rate=preprocessing.get("sample_rate", cfg.sample_rate),
        normalize=preprocessing.get("normalize", cfg.normalize),
        trim_db=preprocessing.get("trim_db", cfg.trim_db),
    )
    corpus = prepare(
        cfg.root, cfg.cache_dir, settings, strict=cfg.strict, download=cfg.download, progress=not args.quiet
    )
    result = run_probe(encoder, corpus, cfg.cache_dir, out, folds=folds, title=args.encoder, progress=not args.quiet)
    folds_done = sorted({row["fold"] for row in result.rows})
    print(f"{'layer':>5}  {'UA mean':>7}  {'UA std':>6}  (over folds {','.join(map(str, folds_done))})")
    for layer, ua in layer_summary(result.rows).items():
        print(f"{layer:>5}  {ua['mean']:7.4f}  {ua['std']:6.4f}")
    print(f"best layer: {result.best_layer} (UA {result.best_ua:.4f} mean over folds)")
    print(f"probe.csv, probe.png and best_layer.json in {result.out_dir}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description="Speech emotion recognition on RAVDESS.")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser(
        "synth", help="write a stand-in of a corpus in its real layout (eSpeak NG voices; default RAVDESS)"
    )
    synth.add_argument("out", type=Path, help="output directory")
    synth.add_argument(
        "--format",
        choices=("ravdess", "cremad", "tess", "savee", "emodb", "iemocap"),
        default="ravdess",
        help="the corpus whose layout, names, side files and language the stand-in has (default ravdess)",
    )
    synth.add_argument(
        "--speakers", type=int, default=None, help="speakers (default: a small stand-in; RAVDESS: --actors)"
    )
    synth.add_argument("--actors", type=int, default=24, help="RAVDESS actors 1..N (default 24: 1440 clips)")
    synth.add_argument(
        "--layout", choices=("tree", "flat"), default="tree", help="savee: AudioData/<speaker>/ (tree) or flat copy"
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=cmd_synth)

    prep = commands.add_parser("prepare", help="decode, resample and cache a corpus; print its summary")
    prep.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.root=PATH data.strict=true")
    prep.set_defaults(run=cmd_prepare)

    pred = commands.add_parser(
        "predict",
        help="emotions of audio files",
        description="Predict the emotion of audio files. Exit status 1 if any file could not be scored.",
    )
    pred.add_argument(
        "model", help="a .ckpt checkpoint, an .onnx file, or a Hugging Face model (directory or Hub name)"
    )
    pred.add_argument(
        "paths", nargs="+", metavar="PATH", help="audio files, directories (searched recursively) or globs"
    )
    pred.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per file and line, with every probability and per-window scores",
    )
    pred.add_argument(
        "--window",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longer clips are scored in windows this long (default 10)",
    )
    pred.add_argument(
        "--hop", type=float, default=5.0, metavar="SECONDS", help="seconds between window starts (default 5)"
    )
    pred.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="clips or windows per forward pass, at most 40 s of audio (default 16)",
    )
    pred.add_argument("--device", default=None, help="torch device for the model, e.g. cuda (default cpu)")
    pred.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="cores to score on, on a CPU (default: the cores other processes leave idle, at least 1)",
    )
    add_segment_options(pred)
    pred.set_defaults(run=cmd_predict)
    add_demo_command(commands)

    ev = commands.add_parser(
        "evaluate",
        help="WA / UA / F1 of a model on a split of the corpus",
        description="Evaluate a model on the clips of a split made from the project config (data.*, seed).",
    )
    ev.add_argument("model", help="a .ckpt checkpoint, an .onnx file, or a Hugging Face model (directory or Hub name)")
    ev.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.root=PATH data.split=fold data.fold=1")
    ev.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output directory (default evaluations/<model>-<split>)"
    )
    ev.add_argument(
        "--stage",
        choices=("test", "val", "train", "all"),
        default="test",
        help="which part of the split (default test); all: every clip, e.g. of a corpus the model never saw",
    )
    ev.add_argument(
        "--perturb",
        action="append",
        metavar="SPEC",
        help="score again under a perturbation and report the drop (repeatable): noise:snr=20,10,5, "
        "reverb[:rt60=0.5], speed[:factor=1.1], gain[:db=-6]; seeded, so a rerun gives the same figures",
    )
    ev.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="clips per forward pass (default data.eval_batch_size or data.batch_size)",
    )
    ev.set_defaults(run=cmd_evaluate)

    exp = commands.add_parser("export", help="a checkpoint as a Hugging Face model directory or an ONNX file")
    exp.add_argument("checkpoint", type=Path, help="a .ckpt checkpoint of this project")
    exp.add_argument(
        "out",
        type=Path,
        help="output directory (hf); for onnx, OUT itself when it ends in .onnx, else the file OUT/model.onnx",
    )
    exp.add_argument(
        "--format",
        choices=("hf", "onnx"),
        default="hf",
        help="hf: save_pretrained directory for transformers (default); "
        'onnx: one ONNX file (needs pip install -e ".[onnx]")',
    )
    exp.add_argument("--overwrite", action="store_true", help="replace an existing export")
    exp.set_defaults(run=cmd_export)

    summ = commands.add_parser("summarize", help="mean and std of the test metrics of a multirun (folds, sweeps)")
    summ.add_argument("sweep_dir", type=Path, help="a directory made by `python train.py -m ...`")
    summ.add_argument(
        "--metric",
        action="append",
        dest="metrics",
        help="metric to summarise (repeatable; default test/acc, test/uar, test/f1)",
    )
    summ.set_defaults(run=cmd_summarize)

    probe = commands.add_parser(
        "probe",
        help="which layer of an encoder carries emotion: a linear probe per layer and fold",
        description="Extract every layer's utterance means once (cached), fit a linear probe per layer and "
        "speaker-independent fold, and write probe.csv, probe.png and best_layer.json.",
    )
    probe.add_argument(
        "encoder", help="a Hugging Face encoder name or directory, or a .ckpt checkpoint of this project"
    )
    probe.add_argument("overrides", nargs="*", help="data overrides, e.g. data.root=PATH data.trim_db=-40")
    probe.add_argument("--folds", default=None, help="EmoBox folds, e.g. 1,2,3 (default: every fold in the corpus)")
    probe.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="output directory (default outputs/probe-<time>)"
    )
    probe.add_argument("--device", default=None, help="torch device for the encoder (default cuda if there is one)")
    probe.set_defaults(run=cmd_probe)
    return parser


# oneDNN keeps the kernels it prepared for every input shape it met, with their work buffers, up to
# 1024 of them: scoring clips of ever new lengths (speech segments, directories, uploads) grows the
# process with each new length until that cap. Batches come sorted by length and padded to a grid
# (ser.inference.PAD_SECONDS), so one batch mostly reuses the last one's kernels, and a few suffice.
# Read when torch loads oneDNN, so set before the commands import torch.
ONEDNN_CACHE_CAPACITY = "8"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_user_error():
        args.run(args)


if __name__ == "__main__":
    main()
