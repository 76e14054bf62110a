"""``ser demo``: the Gradio page and its API, scored through the real client and a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser.cli import main

from . import helpers
from .helpers import build_recording, noise, python_command, require, save_checkpoint, skip_unless, tiny_module

DEMO_EXTRA = 'pip install -e ".[demo]"'

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported; tests stay offline
gr = require("gradio", DEMO_EXTRA)
gradio_client = require("gradio_client", DEMO_EXTRA)
require("silero_vad", DEMO_EXTRA)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
    pytest.mark.filterwarnings("ignore:.*litlogger.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A short clip, a stereo 44.1 kHz FLAC, a recording longer than one window, and unusable uploads."""
    folder = tmp_path_factory.mktemp("uploads")
    sf.write(folder / "short.wav", noise(1.2, 48_000, seed=1), 48_000)
    sf.write(folder / "stereo.flac", noise(0.9, 44_100, channels=2, seed=2), 44_100)
    build_recording(folder / "long.wav", gap_seconds=3.0)  # about 14 s: longer than one window
    (folder / "notes.wav").write_text("these are not samples")
    sf.write(folder / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    sf.write(folder / "too-long.wav", np.zeros(16_000 * 4, dtype=np.float32), 16_000)
    return {path.stem: path for path in folder.iterdir()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    metrics = {"protocol": "speaker-independent, 4 test actors", "test/acc": 0.5, "test/uar": 0.25}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return save_checkpoint(tiny_module(), run / "checkpoints" / "best.ckpt")


@pytest.fixture(scope="module")
def served(checkpoint):
    """The app in this process on a free port (max 3 s uploads), and a gradio_client Client for it."""
    from ser.demo import build_app

    app = build_app(checkpoint, max_seconds=3.0)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        app.close()


def cli_predictions(capsys, model: Path, *paths: Path, extra: tuple[str, ...] = ()) -> list[dict]:
    """What ``ser predict --json`` prints for the files, one dict per line."""
    main(["-q", "predict", str(model), *map(str, paths), "--json", *extra])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def confidences(label_output: dict) -> dict[str, float]:
    return {entry["label"]: entry["confidence"] for entry in label_output["confidences"]}


def test_api_predict_gives_what_ser_predict_gives(served, checkpoint, files, capsys):
    _, client = served
    expected = cli_predictions(capsys, checkpoint, files["short"], files["stereo"])
    for path, want in zip((files["short"], files["stereo"]), expected):
        got = client.predict(gradio_client.handle_file(str(path)), api_name="/predict")
        assert got["label"] == want["label"]
        assert set(confidences(got)) == set(want["probabilities"])
        for label, probability in want["probabilities"].items():
            assert abs(confidences(got)[label] - probability) <= 1e-5


def test_api_segments_gives_the_timeline_rows_of_ser_predict_segments(served, checkpoint, files, capsys):
    _, client = served
    from ser.demo import Demo

    demo = Demo(checkpoint, max_seconds=60.0)  # the served app refuses the long recording: call its function
    got = demo.segments(str(files["long"]))
    expected = cli_predictions(capsys, checkpoint, files["long"], extra=("--segments",))
    assert got["headers"][:4] == ["start", "end", "emotion", "probability"] and len(got["data"]) == len(expected) == 3
    for row, want in zip(got["data"], expected):
        assert row[0] == round(want["start"], 3) and row[2] == want["label"]
        assert np.allclose(row[4:], list(want["probabilities"].values()), atol=1e-6)
    served_rows = client.predict(gradio_client.handle_file(str(files["short"])), api_name="/segments")
    assert served_rows["headers"] == got["headers"]  # noise has no speech: no rows, and no error
    assert served_rows["data"] in ([], [[""] * len(got["headers"])])


@pytest.mark.parametrize(
    ("name", "sentence"),
    [
        ("notes", "notes.wav is not audio this page can read: upload a WAV, FLAC, OGG or MP3 file."),
        ("empty", "empty.wav holds no audio"),
        ("too-long", "The recording is 4 s long, more than the 3 s this page takes"),
    ],
)
def test_unusable_upload_is_one_sentence_and_the_server_keeps_serving(served, files, name, sentence):
    _, client = served
    with pytest.raises(gradio_client.exceptions.AppError) as error:
        client.predict(gradio_client.handle_file(str(files[name])), api_name="/predict")
    message = str(error.value)
    assert sentence in message and "\n" not in message.strip() and "Traceback" not in message
    assert client.predict(gradio_client.handle_file(str(files["short"])), api_name="/predict")["label"]


def test_page_shows_model_card_and_timeline_for_long_input(checkpoint, files):
    from ser.demo import Demo, describe

    demo = Demo(checkpoint, max_seconds=60.0)
    card = describe(demo.card)
    assert demo.card["name"].endswith("-best") and demo.card["name"] in card
    assert "speaker-independent, 4 test actors" in card and "WA 0.500" in card and "UA 0.250" in card
    assert ", ".join(demo.scorer.labels) in card
    short = demo.analyse(str(files["short"]))
    assert set(short[0]) == set(demo.scorer.labels) and short[1]["visible"] is False
    long = demo.analyse(str(files["long"]))
    assert long[1]["visible"] is True and long[1]["value"] is not None
    assert len(long[2]["value"]["data"]) == 3


def test_examples_must_be_a_folder_of_audio(checkpoint, files, tmp_path):
    from ser.demo import DemoError, build_app

    with pytest.raises(DemoError, match="holds no audio files"):
        build_app(checkpoint, examples=tmp_path)
    app = build_app(checkpoint, examples=files["short"].parent)
    assert any(type(block).__name__ == "Dataset" for block in app.blocks.values())


def wait_for(url: str, process: subprocess.Popen, seconds: float = 180.0) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ser demo exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"ser demo did not answer at {url} within {seconds} s")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    from ser.export import export_hf

    return export_hf(checkpoint, tmp_path_factory.mktemp("export") / "tiny-hf")


@pytest.fixture(scope="module")
def demo_command(exported):
    """``ser demo <exported model>`` in its own process, as a user starts it."""
    port = free_port()
    command, env = python_command(
        ["-m", "ser.cli", "-q", "demo", str(exported), "--port", str(port)], env={"GRADIO_ANALYTICS_ENABLED": "False"}
    )
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def docs_snippet() -> str:
    """The gradio_client snippet of docs/demo.md, as a user copies it."""
    text = (REPO / "docs" / "demo.md").read_text()
    [snippet] = re.findall(r"```python\n(from gradio_client import .*?)```", text, flags=re.S)
    return snippet


@pytest.mark.slow
def test_docs_snippet_against_ser_demo_gives_what_ser_predict_gives(
    demo_command, exported, files, tmp_path, capsys, monkeypatch
):
    """The snippet, run as written (in a folder holding clip.wav and interview.wav) against ``ser demo`` of an
    exported model, prints the probabilities ``ser predict --json`` prints, within 1e-5."""
    shutil.copy(files["short"], tmp_path / "clip.wav")
    shutil.copy(files["long"], tmp_path / "interview.wav")
    snippet = docs_snippet().replace("http://127.0.0.1:7860/", demo_command)
    assert snippet != docs_snippet()
    [want] = cli_predictions(capsys, exported, tmp_path / "clip.wav")
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "docs/demo.md", "exec"), namespace)
    printed = capsys.readouterr().out
    got = namespace["probabilities"]
    assert namespace["result"]["label"] == want["label"] and f"\n{want['label']} {{" in printed
    assert set(got) == set(want["probabilities"])
    assert max(abs(got[label] - p) for label, p in want["probabilities"].items()) <= 1e-5
    assert len(namespace["timeline"]["data"]) == 3  # the three takes of the long recording


def browser_or_skip():
    """A headless Chromium driven by Selenium, or a skip (a failure in CI) that says what is missing."""
    webdriver = require("selenium.webdriver", DEMO_EXTRA)
    binary = next((path for path in CHROMIUM if Path(path).is_file()), shutil.which("chromium"))
    driver = CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else shutil.which("chromedriver")
    skip_unless(
        binary is not None and driver is not None,
        "no Chromium browser and driver: apt-get install -y chromium chromium-driver (.ci/run does)",
    )
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.binary_location = binary
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


@pytest.mark.slow
def test_browser_upload_shows_the_top_emotion(demo_command, exported, files, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    [want] = cli_predictions(capsys, exported, files["short"])
    browser = browser_or_skip()
    try:
        browser.get(demo_command)
        wait = WebDriverWait(browser, 120)
        upload = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "input[type=file]"))[0]
        assert "Labels:" in browser.find_element(By.ID, "model-card").text
        upload.send_keys(str(files["short"]))
        top = "#emotion [data-testid=label-output-value]"
        shown = wait.until(lambda b: [e.text for e in b.find_elements(By.CSS_SELECTOR, top) if e.text.strip()])
        assert shown == [want["label"]]
    finally:
        browser.quit()


def test_a_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setattr(helpers, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        skip_unless(False, "no Chromium browser and driver")
    monkeypatch.setattr(helpers, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium browser and driver"):
        skip_unless(False, "no Chromium browser and driver")
