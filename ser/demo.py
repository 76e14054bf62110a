"""A Gradio page and API in front of a model: ``ser demo MODEL``.

The page takes an upload or a microphone recording and shows the probability of every emotion; for
input longer than one window it also draws the emotions over time (:mod:`ser.segments`). Gradio
gives the page an API, with two endpoints:

- ``/predict``: an audio file -> the probability of each label (Gradio's label output:
  ``{"label": top, "confidences": [{"label": ..., "confidence": ...}, ...]}``), the numbers
  ``ser predict --json`` prints for the same file;
- ``/segments``: an audio file -> the timeline rows (``headers`` and ``data``: start, end, emotion,
  probability and every label's probability), the rows of ``ser predict --segments``.

An unusable upload is answered with one sentence (a Gradio error) and the server keeps serving.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import soundfile as sf

from .data.audio import AUDIO_SUFFIXES, AudioError
from .errors import UserError, first_line
from .inference import Prediction, load_model, predict
from .scoring import Scorer
from .segments import SegmentSettings, load_vad, plot_timeline, segment_file, timeline_rows

log = logging.getLogger(__name__)

WINDOW_SECONDS = 10.0  # ser predict's default window: longer input also gets a timeline
HOP_SECONDS = 5.0


class DemoError(UserError):
    """An upload or a setting the demo cannot use; the message is one sentence saying what to do."""


def model_card(model: str | Path, scorer: Scorer) -> dict[str, Any]:
    """Name, labels, and the run's ``metrics.json`` (protocol, scores) when one sits beside the model."""
    from .export import find_run_metrics

    path = Path(str(model)).expanduser()
    metrics = None
    if path.exists():
        metrics, _ = find_run_metrics(path / "config.json" if path.is_dir() else path)
    return {"name": scorer.name, "labels": list(scorer.labels), "metrics": metrics or {}}


def describe(card: dict[str, Any]) -> str:
    """The model's card as Markdown for the page."""
    lines = [f"**Model:** {card['name']}", f"**Labels:** {', '.join(card['labels'])}"]
    metrics = card["metrics"]
    if metrics.get("protocol"):
        lines.append(f"**Protocol:** {metrics['protocol']}")
    scores = [
        f"{name} {metrics[key]:.3f}"
        for name, key in (("WA", "test/acc"), ("UA", "test/uar"), ("macro F1", "test/f1"))
        if isinstance(metrics.get(key), (int, float))
    ]
    if scores:
        lines.append(f"**Test scores:** {', '.join(scores)}")
    if not metrics:
        lines.append("No metrics.json beside this model: its accuracy is not known here.")
    return "  \n".join(lines)


def check_upload(path: str | None, max_seconds: float) -> float:
    """The duration in seconds of a usable upload; raises DemoError with one sentence otherwise."""
    if not path:
        raise DemoError("No audio was given: upload a file or record with the microphone.")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError):
        name = Path(path).name
        raise DemoError(f"{name} is not audio this page can read: upload a WAV, FLAC, OGG or MP3 file.") from None
    if info.frames == 0:
        raise DemoError(f"{Path(path).name} holds no audio: upload a recording with sound in it.")
    if info.duration > max_seconds:
        raise DemoError(
            f"The recording is {info.duration:.0f} s long, more than the {max_seconds:.0f} s this page takes: "
            "cut it, or run `ser predict MODEL FILE --segments` on it."
        )
    return info.duration


class Demo:
    """The model behind the page, and the functions its events and API endpoints call."""

    def __init__(self, model: str | Path, max_seconds: float = 600.0, device: str | None = None):
        if not max_seconds > 0:
            raise DemoError(f"--max-seconds {max_seconds} must be positive")
        self.scorer = load_model(model, device=device)
        self.card = model_card(model, self.scorer)
        self.max_seconds = max_seconds
        self.vad = None  # silero-vad, loaded on the first timeline
        self.headers = ["start", "end", "emotion", "probability", *self.scorer.labels]

    def _prediction(self, path: str | None) -> Prediction:
        check_upload(path, self.max_seconds)
        [prediction] = predict(self.scorer, [path], window_seconds=WINDOW_SECONDS, hop_seconds=HOP_SECONDS)
        if prediction.error is not None:
            raise DemoError(f"The model could not score this audio: it is {prediction.error}.")
        return prediction

    def probabilities(self, path: str | None) -> dict[str, float]:
        """``/predict``: every label's probability, as ``ser predict`` gives it."""
        return self._error_on_page(lambda: self._prediction(path).probabilities)

    def segments(self, path: str | None) -> dict[str, Any]:
        """``/segments``: the timeline rows of the speech in the file."""
        return self._error_on_page(lambda: {"headers": self.headers, "data": self._timeline(path)[1]})

    def _timeline(self, path: str | None) -> tuple[list, list[list]]:
        """The scored speech segments of the file and their rows; none when it holds no speech."""
        check_upload(path, self.max_seconds)
        if self.vad is None:
            self.vad = load_vad()
        try:
            with self.scorer.inference():
                segments = segment_file(self.scorer, path, SegmentSettings(), self.vad, WINDOW_SECONDS, HOP_SECONDS)
        except (AudioError, OSError) as error:
            raise DemoError(f"No timeline for this audio ({first_line(error)}).") from None
        failed = next((s for s in segments if s.error is not None), None)
        if failed is not None:
            raise DemoError(f"The model could not score the speech at {failed.start:.1f} s: {failed.error}.")
        return segments, timeline_rows(segments, self.scorer.labels)

    def analyse(self, path: str | None):
        """The page's action: probabilities, and a timeline plot and rows for input longer than one window."""
        import gradio as gr

        def run():
            prediction = self._prediction(path)
            if prediction.duration is None or prediction.duration <= WINDOW_SECONDS:
                return prediction.probabilities, gr.update(value=None, visible=False), gr.update(visible=False)
            try:
                segments, rows = self._timeline(path)
            except DemoError as error:  # the probabilities still stand
                log.info("no timeline: %s", error)
                rows = []
            if not rows:
                return prediction.probabilities, gr.update(value=None, visible=False), gr.update(visible=False)
            figure = plot_timeline(segments, self.scorer.labels, title=f"{Path(path).name}: emotions over time")
            table = gr.update(value={"headers": self.headers, "data": rows}, visible=True)
            return prediction.probabilities, gr.update(value=figure, visible=True), table

        return self._error_on_page(run)

    @staticmethod
    def _error_on_page(run):
        import gradio as gr

        try:
            return run()
        except UserError as error:
            log.info("refused an upload: %s", error)
            raise gr.Error(str(error), print_exception=False) from None


def build_app(
    model: str | Path, examples: str | Path | None = None, max_seconds: float = 600.0, device: str | None = None
):
    """The Gradio Blocks app for MODEL (anything ``ser predict`` takes); ``examples`` is a folder of audio files."""
    import gradio as gr

    demo = Demo(model, max_seconds=max_seconds, device=device)
    example_files = _example_files(examples)
    with gr.Blocks(title=f"ser: {demo.card['name']}") as app:
        gr.Markdown("# Speech emotion recognition\nUpload or record speech and see which emotions the model hears.")
        with gr.Row():
            with gr.Column():
                audio_in = gr.Audio(sources=["upload", "microphone"], type="filepath", label="speech")
                button = gr.Button("Score", variant="primary")
                gr.Markdown(describe(demo.card), elem_id="model-card")
            with gr.Column():
                label_out = gr.Label(num_top_classes=len(demo.scorer.labels), label="emotion", elem_id="emotion")
        plot_out = gr.Plot(label="emotions over time", visible=False)
        table_out = gr.Dataframe(headers=demo.headers, label="speech segments", visible=False, interactive=False)
        if example_files:
            gr.Examples(example_files, inputs=audio_in)
        outputs = [label_out, plot_out, table_out]
        button.click(demo.analyse, audio_in, outputs, api_visibility="private")
        audio_in.upload(demo.analyse, audio_in, outputs, api_visibility="private")
        audio_in.stop_recording(demo.analyse, audio_in, outputs, api_visibility="private")
        # The API: one audio file in, label probabilities or timeline rows out.
        gr.Button(visible=False).click(
            demo.probabilities, gr.Audio(type="filepath", visible=False), gr.Label(visible=False), api_name="predict"
        )
        gr.Button(visible=False).click(
            demo.segments,
            gr.Audio(type="filepath", visible=False),
            gr.Dataframe(headers=demo.headers, visible=False),
            api_name="segments",
        )
    return app


def _example_files(folder: str | Path | None) -> list[str]:
    if folder is None:
        return []
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DemoError(f"--examples {folder} is not a directory: give a folder of audio files")
    files = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DemoError(f"--examples {folder} holds no audio files ({', '.join(AUDIO_SUFFIXES[:3])}, ...)")
    return files


def serve(
    model: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    examples: str | Path | None = None,
    max_seconds: float = 600.0,
    device: str | None = None,
) -> None:
    """Build the app and serve it until interrupted."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise DemoError('gradio is not installed: pip install -e ".[demo]"') from None
    app = build_app(model, examples=examples, max_seconds=max_seconds, device=device)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests are not news
    allowed = [str(Path(examples).expanduser().resolve())] if examples is not None else None
    app.launch(server_name=host, server_port=port, share=share, allowed_paths=allowed, show_error=True)


__all__ = ["Demo", "DemoError", "build_app", "check_upload", "serve"]
