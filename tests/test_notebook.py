"""notebooks/explore_checkpoint.ipynb runs from top to bottom on a tiny checkpoint and corpus, and draws its figures."""

from __future__ import annotations

import os

import pytest

from .helpers import REPO, save_checkpoint, tiny_module, write_noise_corpus

NOTEBOOK = REPO / "notebooks" / "explore_checkpoint.ipynb"


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    parameters = code[0].source
    for name in ("CHECKPOINT", "AUDIO_DIR", "DATA_ROOT", "CACHE_DIR"):
        assert f'{name} = os.environ.get("SER_{name}"' in parameters


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_checkpoint(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    checkpoint = save_checkpoint(tiny_module(), tmp_path / "tiny.ckpt")
    root = write_noise_corpus(tmp_path / "ravdess", actors=(1, 2), max_seconds=0.4)
    # The kernel is a child process: it inherits these (and the offline settings of conftest).
    monkeypatch.setenv("SER_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("SER_AUDIO_DIR", str(root / "Actor_01"))
    monkeypatch.setenv("SER_DATA_ROOT", str(root))
    monkeypatch.setenv("SER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SER_OUT_DIR", str(tmp_path / "evaluation"))
    monkeypatch.setenv("SER_N_CLIPS", "3")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # "python3" is ipykernel's own kernelspec, which jupyter_client runs with this interpreter:
    # nothing needs installing with `ipykernel install`.
    client = nbclient.NotebookClient(
        notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    images = [
        output for output in outputs if output.output_type == "display_data" and "image/png" in output.get("data", {})
    ]
    assert len(images) == 3  # the probabilities of the clips, the confusion matrix, the per-class scores
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "WA" in text and "UA" in text
    for name in ("metrics.json", "confusion_matrix.png", "per_class.png", "predictions.csv"):
        assert (tmp_path / "evaluation" / name).is_file()
