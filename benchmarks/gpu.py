"""The prepared GPU check: the project's CUDA paths end to end and its benchmarks at real size, in one go.

    bash benchmarks/gpu.sh [--cpu] [--out DIR] [--budget SECONDS] [--only PART,...] [--levers] [--keep-work]
    python benchmarks/gpu.py --merge DIR/BENCHMARKS.md      # its gpu section into the repo's BENCHMARKS.md

A GPU is at hand only at times and briefly, so everything is prepared to run in one command of at most
8 minutes (``--budget``), each part within its own share of that time; a part that fails or runs out
of time is recorded and the next one runs. The parts:

1. ``preflight``: the libraries (what is missing, and how to install it), the device, CUDA and driver
   versions (nvidia-smi), and whether ``torch.compile`` builds a kernel on the device.
2. ``e2e``: ``train.py experiment=demo`` shortened (a small synthetic corpus, two short epochs) with
   gradient accumulation 2, in 16-mixed and in bf16-mixed (``--cpu``: one epoch, in bf16-mixed); each run
   is stopped by SIGTERM mid-epoch (``tests/interrupt.py``), resumed with ``ckpt_path=last`` in its fixed
   ``hydra.run.dir``, and must end with finite metrics. Then ``ser predict`` of its checkpoint on the
   device, ``ser evaluate``, ``ser export`` to a Hugging Face directory (predicted with on the device)
   and to ONNX (run by onnxruntime's CPU provider); the exports must give the checkpoint's probabilities.
3. ``train-large`` and ``train-base``: ``benchmarks/train.py`` at XLSR-53's and wav2vec2-base's shapes
   (random weights), batch 4 x accumulation 2, sides ser 16-mixed, ser bf16-mixed and the recipe
   (``transformers.Trainer``, fp16), then ser with ``compile=true`` in a run of its own, with ``--flops``
   (FLOPs counted, model FLOPs utilisation, SDPA kernel). ``--cpu``: the tiny encoder, once, on one
   actor, without the compile side.
4. ``predict``: ``benchmarks/predict.py`` at the large shapes on the device (``--cpu``: the e2e
   checkpoint on a few files).

``--cpu`` runs every step of the GPU's at least once, as small as it goes (:data:`CPU_SIZES`), and says
of each step it leaves out ``skipped on CPU (why)``.

``--only e2e,train-large`` runs those parts alone (after the preflight), within their own shares of the
time, to rerun what failed. ``--levers`` adds two sides to the training benchmarks, the levers towards
the utilisation target that are behind switches: cuDNN's benchmark mode and fused Adam.

Every step prints one line ``pass|fail|skip  <part>/<step>  <seconds> s  <figures or reason>`` and the
run ends with all of them again and exit status 1 if any failed. Everything it leaves is in ``--out``
(default ``gpu-check/``), flat: ``gpu.log`` (every step's output), ``summary.txt`` (the step lines),
``BENCHMARKS.md`` (the ``gpu`` section, with the benchmarks' own sections inside) and
``gpu-check.tar.gz`` (each step's log and the runs' metrics). The repository's BENCHMARKS.md is never
written by the check itself; ``--merge`` copies the section there once the folder is back.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.util
import json
import math
import os
import re
import resource
import runpy
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # ser, for --merge and the ONNX check, without an install

# The modules a run imports, with the pip package that brings each (setup.cfg: install_requires, bench, dev)
REQUIRED = {
    "torch": "torch",
    "torchaudio": "torchaudio",
    "pytorch_lightning": "pytorch-lightning",
    "transformers": "transformers",
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "torchmetrics": "torchmetrics",
    "soundfile": "soundfile",
    "rich": "rich",
    "espeakng_loader": "espeakng-loader",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "safetensors": "safetensors",
    "pooch": "pooch",
    "wandb": "wandb",
    "datasets": "datasets",
    "accelerate": "accelerate",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
}
WHEELS = REPO / ".whl"  # wheels carried to a machine without a package index
# Seconds for each part on a GPU: 8 minutes in all, the most a device command should take with a rerun in reach
GPU_BUDGET = {"preflight": 45, "e2e": 130, "train-large": 160, "train-base": 75, "predict": 70}
# On the CPU: generous, since a 2-core machine shared with other work may run several times slower than alone
CPU_BUDGET = {"preflight": 30, "e2e": 240, "train-large": 220, "train-base": 10, "predict": 100}
# The e2e corpus (and the training benchmarks' on a GPU): 3 synthetic actors, one each for training, validation
# and test
E2E_ACTORS = 3


@dataclass(frozen=True)
class Sizes:
    """What the check runs at: the e2e training runs, the files predicted, the training benchmark."""

    precisions: tuple[str, ...]  # the e2e runs, each interrupted and resumed
    batch_size: int
    max_seconds: float  # clips cropped to this length in training
    epochs: int
    # per epoch: the SIGTERM comes at the 3rd batch, inside the 2nd accumulation window of 2; the run stops
    # at the window's end, after the 4th, and the resumed run goes on from the 5th
    train_batches: int
    val_batches: int
    test_batches: int | None  # None: the whole test actor
    predict_files: int
    benchmark_actors: int  # the training benchmark's corpus when the e2e part made none (on the CPU: always)
    benchmark_steps: dict[str, int]  # optimizer steps per side, by encoder size


GPU_SIZES = Sizes(
    precisions=("16-mixed", "bf16-mixed"),
    batch_size=4,
    max_seconds=3.0,
    epochs=2,
    train_batches=6,
    val_batches=2,
    test_batches=None,
    predict_files=8,
    benchmark_actors=E2E_ACTORS,
    benchmark_steps={"large": 24, "base": 32},
)
# The CPU's: every step of the GPU's once, as small as it goes. 16-mixed is CUDA's, so the e2e path runs
# in bf16-mixed, the other mixed precision of the GPU's; one epoch of 6 batches still stops inside an
# accumulation window and resumes mid-epoch, with one validation after it.
CPU_SIZES = Sizes(
    precisions=("bf16-mixed",),
    batch_size=2,
    max_seconds=1.0,
    epochs=1,
    train_batches=6,
    val_batches=1,
    test_batches=2,
    predict_files=4,
    benchmark_actors=1,
    benchmark_steps={"tiny": 2},
)
# Largest difference of a probability between the checkpoint and its exports: the device's float32
# kernels (cuDNN convolutions in TF32 by default) against onnxruntime's CPU ones
EXPORT_TOLERANCE = 5e-3


@dataclass
class Step:
    name: str
    status: str  # pass, fail or skip
    seconds: float
    detail: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}  {self.seconds:.1f} s  {self.detail}".rstrip()


@dataclass
class Check:
    out: Path
    work: Path
    cpu: bool
    budget: dict[str, float]
    sizes: Sizes
    forks: Forks | None = None  # on the CPU, where the Python steps are forked (see Forks)
    steps: list[Step] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)  # title -> a benchmark's section body
    facts: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / "gpu.log", "a", buffering=1)  # noqa: SIM115 - open for the whole check
        self.part = ""
        self.part_ends = 0.0

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")

    def start_part(self, part: str) -> None:
        self.part = part
        self.part_ends = time.monotonic() + self.budget[part]
        self.say(f"=== {part} (at most {self.budget[part]:.0f} s)")

    def left(self) -> float:
        return self.part_ends - time.monotonic()

    def record(self, name: str, status: str, seconds: float, detail: str = "") -> Step:
        step = Step(f"{self.part}/{name}", status, seconds, " ".join(detail.split()))
        self.steps.append(step)
        self.say(step.line())
        return step

    def run(
        self, name: str, command: list[str], ok_codes=(0,), limit: float | None = None, fork: bool = True
    ) -> tuple[bool, str, float]:
        """Run ``command`` in the repository, its output to its own log and gpu.log, within the part's time left
        (or ``limit`` seconds, if fewer); on the CPU in a forked child (:class:`Forks`), unless not ``fork``.

        Returns (exit status in ``ok_codes``, its output, seconds). A failure is recorded here, with the
        last lines of the output on the console; a success is left for the caller to record with figures.
        """
        left = self.left() if limit is None else min(limit, self.left())
        if left < 1:
            self.record(name, "fail", 0.0, f"the part's {self.budget[self.part]:.0f} s were spent before it started")
            return False, "", 0.0
        log_path = self.logs / f"{self.part}-{name}.log"
        self.log.write(f"--- {self.part}/{name}: {shlex.join(command)}\n")
        started = time.monotonic()
        with open(log_path, "w") as output:
            output.write(f"$ {shlex.join(command)}\n")
        if fork and self.forks is not None and Forks.takes(command):
            code, timed_out, cpu_seconds = self.forks.run(command, log_path, left)
        else:
            code, timed_out, cpu_seconds = run_process(command, log_path, left)
        seconds = time.monotonic() - started
        text = log_path.read_text(errors="replace")
        self.log.write(text + "\n")
        # CPU seconds tell a slow step from a busy machine
        self.log.write(f"--- {self.part}/{name}: {seconds:.1f} s, {cpu_seconds:.1f} CPU s\n")
        if timed_out:
            self.record(name, "fail", seconds, f"timed out after {left:.0f} s (its share of the part's time)")
        elif code not in ok_codes:
            self.record(name, "fail", seconds, f"exit status {code}: {last_error(text)}")
        if timed_out or code not in ok_codes:
            tail = "\n".join(text.rstrip().splitlines()[-25:])
            print(f"    last lines of {log_path.name}:\n" + "\n".join(f"    | {line}" for line in tail.splitlines()))
            return False, text, seconds
        return True, text, seconds


def run_process(command: list[str], log_path: Path, timeout: float) -> tuple[int, bool, float]:
    """Run ``command`` in the repository, its output appended to ``log_path``; (exit status, timed out, CPU seconds)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = usage.ru_utime + usage.ru_stime
    with open(log_path, "a") as output:
        # a session of its own, so that a timeout ends the processes it started too
        process = subprocess.Popen(
            command, cwd=REPO, env=child_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code, timed_out = process.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code, timed_out = process.wait(), True
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return code, timed_out, usage.ru_utime + usage.ru_stime - cpu_before


# What the CPU check's Python steps import, once, in the process they are forked from
PRELOADED = (
    "torch",
    "torchaudio",
    "pytorch_lightning",
    "transformers",
    "hydra",
    "torchmetrics",
    "sklearn.model_selection",
    "onnx",
    "onnxruntime",
    "ser.train",
    "ser.evaluate",
    "ser.export",
    "ser.inference",
    "ser.config",
    "datasets",  # the training benchmark's recipe side
    "accelerate",
)  # not the modules the steps run as __main__ (ser.cli, tests.interrupt): runpy would run them over


class Forks:
    """The CPU check's Python steps, each forked from one process that imported their libraries once.

    On a CPU the steps are tiny and each new interpreter would spend most of its time importing torch,
    Lightning and transformers, again and again. A forked child is a process of its own as a new
    interpreter would be (its own session, output, exit status and signals), running the same command
    line through :mod:`runpy`. The GPU check starts every step as a new interpreter: forking a process
    that may have touched CUDA is unsafe, and there the imports are a small part of each step.
    """

    def __init__(self):
        # the parent's stdin for commands, its stdout for replies: "<pid>", then "<exit status> <CPU seconds>"
        self.process = subprocess.Popen(
            python(__file__, "--fork-server"),
            cwd=REPO,
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pending = b""

    @staticmethod
    def takes(command: list[str]) -> bool:
        """Whether ``command`` is ``python -m MODULE ...`` or ``python SCRIPT.py ...``, which a fork can run."""
        return command[0] == sys.executable and len(command) > 1 and (command[1] == "-m" or command[1].endswith(".py"))

    def _reply(self, timeout: float | None) -> str | None:
        """The server's next line, or None if none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = self.process.stdout.fileno()
        while b"\n" not in self.pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([out], [], [], wait)[0]:
                return None
            chunk = os.read(out, 4096)
            if not chunk:
                raise RuntimeError(f"the fork server ended (exit status {self.process.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def run(self, command: list[str], log_path: Path, timeout: float) -> tuple[int, bool, float]:
        """As :func:`run_process`, in a child forked from the server."""
        self.process.stdin.write(json.dumps({"argv": command[1:], "log": str(log_path)}) + "\n")
        self.process.stdin.flush()
        pid = int(self._reply(timeout=60))
        reply, timed_out = self._reply(timeout), False
        if reply is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            reply, timed_out = self._reply(None), True
        code, cpu_seconds = reply.split()
        return int(code), timed_out, float(cpu_seconds)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def fork_server() -> None:
    """Import :data:`PRELOADED`, then fork a child for every command line read from stdin (see :class:`Forks`)."""
    for module in PRELOADED:
        with contextlib.suppress(ImportError):  # a step that needs it fails as a new interpreter would
            importlib.import_module(module)
    replies = sys.stdout
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            run_forked(job["argv"], job["log"])
        print(pid, file=replies, flush=True)
        _, status, usage = os.wait4(pid, 0)
        print(os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, file=replies, flush=True)


def run_forked(argv: list[str], log: str) -> None:
    """In the forked child: run ``python ARGV`` (``-m MODULE ...`` or ``SCRIPT ...``) and exit with its status."""
    os.setsid()  # a session of its own, which a timeout kills whole
    output = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(output, 1)
    os.dup2(output, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = str(Path(argv[0]).resolve().parent)  # as a script's own folder comes first
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as error:
        if isinstance(error.code, int) or error.code is None:
            code = error.code or 0
        else:
            print(error.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - reported as a new interpreter would, with its traceback
        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()  # as an interpreter's exit would: loggers, pools, temporary folders
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "WANDB_API_KEY"}
    pythonpath = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
    )
    return env


def last_error(text: str) -> str:
    """The line of a failed command's output that says why: its last ``error``/``Error`` line, or its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(^error:|Error\b|Exception\b)", line):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


# --- 1. preflight ---------------------------------------------------------------------------------


def missing_modules() -> list[str]:
    return [module for module in REQUIRED if importlib.util.find_spec(module) is None]


def preflight(check: Check) -> bool:
    """Libraries, device and versions; False when nothing else can run."""
    check.start_part("preflight")
    started = time.monotonic()
    missing = missing_modules()
    if missing and WHEELS.is_dir():
        check.say(f"missing {', '.join(missing)}: installing from {WHEELS}")
        ok, _, _ = check.run(
            "install",
            python("-m", "pip", "install", "--no-index", "--find-links", str(WHEELS), "-e", f"{REPO}[dev]"),
        )
        importlib.invalidate_caches()
        missing = missing_modules()
    if missing:
        packages = " ".join(REQUIRED[module] for module in missing)
        check.record(
            "imports",
            "fail",
            time.monotonic() - started,
            f"missing {', '.join(missing)}: install with pip install -e '.[dev]' (or pip install {packages}), "
            f"or carry wheels in {WHEELS.name}/ (pip download -d .whl -e '.[dev]') for a machine without an index",
        )
        return False
    check.record("imports", "pass", time.monotonic() - started, f"{len(REQUIRED)} modules")

    import torch

    check.facts["python"] = sys.version.split()[0]
    check.facts["torch"] = torch.__version__
    check.facts["CUDA (torch)"] = str(torch.version.cuda)
    if check.cpu:
        check.record("device", "pass", 0.0, "--cpu: CPU only, tiny sizes")
        check.facts["device"] = "CPU (--cpu)"
        return True
    if not torch.cuda.is_available():
        check.record("device", "fail", 0.0, "torch finds no CUDA device: run on a GPU machine, or with --cpu")
        return False
    check.facts["device"] = torch.cuda.get_device_name(0)
    check.facts["GPU memory"] = f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        smi = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        check.facts["nvidia-smi"] = smi.splitlines()[0]
        check.facts["driver"] = smi.splitlines()[0].split(",")[1].strip()
        version = re.search(
            r"CUDA Version:\s*([\d.]+)", subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
        )
        check.facts["CUDA (driver)"] = version.group(1) if version else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError) as error:
        check.facts["nvidia-smi"] = f"unavailable ({type(error).__name__})"
    check.record("device", "pass", time.monotonic() - started, f"{check.facts['device']}, CUDA {torch.version.cuda}")
    return True


def compile_works(check: Check) -> bool:
    """Whether torch.compile builds a kernel on the device (Triton and a C compiler on a GPU machine)."""
    if check.cpu:
        # Inductor's first build on a CPU probes the compiler for minutes; the CPU's compile path is the
        # training tests' and benchmarks' (compile=true)
        check.record("compile", "skip", 0.0, "skipped on CPU (Inductor's first build takes minutes there)")
        return False
    code = (
        "import torch; f = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2); "
        f"x = torch.randn(64, device={check.device!r}); assert torch.allclose(f(x), torch.nn.functional.gelu(x) * 2)"
    )
    ok, _, seconds = check.run("compile", python("-c", code))
    if ok:
        check.record("compile", "pass", seconds, f"torch.compile builds and runs on {check.device}")
    return ok


# --- 2. end to end ----------------------------------------------------------------------------------


def data_overrides(check: Check, corpus: Path) -> list[str]:
    """The e2e corpus and its speaker split: one actor for validation, one for test."""
    return [
        f"data.root={corpus}",
        "data.synthesize_actors=null",
        f"data.cache_dir={check.work / 'cache'}",
        "data.split=speaker",
        "data.val_actors=1",
        "data.test_actors=1",
    ]


def e2e_overrides(check: Check, corpus: Path, precision: str, run_dir: Path) -> list[str]:
    """The demo shortened (on a GPU: two epochs of 6 batches of 4 clips), accumulation 2, a checkpoint at every step."""
    sizes = check.sizes
    return [
        "experiment=demo",
        *data_overrides(check, corpus),
        f"data.batch_size={sizes.batch_size}",
        f"data.max_seconds={sizes.max_seconds}",
        f"trainer.accelerator={'cpu' if check.cpu else 'gpu'}",
        "trainer.devices=1",
        f"trainer.precision={precision}",
        f"trainer.max_epochs={sizes.epochs}",
        f"trainer.limit_train_batches={sizes.train_batches}",
        f"trainer.limit_val_batches={sizes.val_batches}",
        *([] if sizes.test_batches is None else [f"trainer.limit_test_batches={sizes.test_batches}"]),
        "trainer.accumulate_grad_batches=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "checkpoint.every_n_steps=1",
        "logger=csv",
        f"run_dir={run_dir}",
    ]


def finite_metrics(run_dir: Path, required: tuple[str, ...]) -> tuple[bool, str]:
    """Whether ``run_dir/metrics.json`` holds the ``required`` metrics and every one of its numbers is finite."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return False, f"no {path.name} in {run_dir}"
    metrics = json.loads(path.read_text())
    numbers = {key: value for key, value in metrics.items() if isinstance(value, (int, float))}
    missing = [key for key in required if key not in numbers]
    if missing:
        return False, f"no {', '.join(missing)} in {path.name} (it holds {', '.join(numbers) or 'no numbers'})"
    bad = [key for key, value in numbers.items() if not math.isfinite(value)]
    if bad:
        return False, f"metrics not finite: {', '.join(bad)}"
    return True, ", ".join(f"{key} {numbers[key]:.4f}" for key in ("val/loss", "val/uar", "test/uar") if key in numbers)


def train_interrupted_and_resumed(check: Check, corpus: Path, precision: str) -> Path | None:
    """SIGTERM at the 3rd batch (inside the 2nd accumulation window), then ``train.py ... ckpt_path=last``."""
    run_dir = check.work / f"run-{precision}"
    overrides = e2e_overrides(check, corpus, precision, run_dir)
    ok, text, seconds = check.run(
        f"train-{precision}-sigterm",
        python("-m", "tests.interrupt", json.dumps(overrides), "--at", "3", "--signal", str(int(signal.SIGTERM))),
        ok_codes=(128 + signal.SIGTERM,),
    )
    if not ok:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        check.record(f"train-{precision}-sigterm", "fail", seconds, f"stopped, but no {last}")
        return None
    check.record(f"train-{precision}-sigterm", "pass", seconds, "stopped with exit status 143 and a last.ckpt")

    resume = [o for o in overrides if not o.startswith("run_dir=")] + [f"hydra.run.dir={run_dir}", "ckpt_path=last"]
    ok, text, seconds = check.run(f"train-{precision}-resume", python("train.py", *resume))
    if not ok:
        return None
    if "resuming" not in text:
        check.record(f"train-{precision}-resume", "fail", seconds, "the run did not say it resumed")
        return None
    # the validation after the resumed epoch, and the test after fit
    finite, detail = finite_metrics(run_dir, ("val/loss", "val/uar", "test/uar"))
    check.record(f"train-{precision}-resume", "pass" if finite else "fail", seconds, detail)
    return last if finite else None


def predictions(text: str) -> dict[str, dict[str, float]]:
    """``ser predict --json`` output: path -> probabilities."""
    found = {}
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            found[Path(record["path"]).name] = record["probabilities"]
    return found


def largest_difference(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    if a.keys() != b.keys():
        return math.inf
    return max(abs(a[f][label] - b[f].get(label, math.inf)) for f in a for label in a[f])


def takes_option(command: list[str], option: str) -> bool:
    """Whether a command's ``--help`` lists ``option``."""
    result = subprocess.run(
        [*command, "--help"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120
    )
    return option in result.stdout


def end_to_end(check: Check) -> None:
    check.start_part("e2e")
    corpus = check.work / "corpus"
    # a new interpreter, which needs torch alone: on the CPU, while the fork server imports the rest
    ok, _, seconds = check.run(
        "corpus", python("-m", "ser.cli", "-q", "synth", str(corpus), "--actors", str(E2E_ACTORS)), fork=False
    )
    if not ok:
        return
    check.record("corpus", "pass", seconds, f"{E2E_ACTORS} synthetic actors")
    if check.cpu:
        check.record("train-16-mixed", "skip", 0.0, "skipped on CPU (16-mixed is CUDA's; bf16-mixed runs instead)")
    checkpoints = [train_interrupted_and_resumed(check, corpus, precision) for precision in check.sizes.precisions]
    checkpoint = next((c for c in checkpoints if c is not None), None)
    if checkpoint is None:
        check.record("predict-evaluate-export", "skip", 0.0, "no training run ended")
        return

    files = sorted(corpus.glob(f"Actor_{E2E_ACTORS:02d}/*.wav"))[: check.sizes.predict_files]
    paths = [str(f) for f in files]
    ser = python("-m", "ser.cli", "-q")
    on_device = ["--device", check.device]
    ok, text, seconds = check.run("predict", [*ser, "predict", "--json", *on_device, str(checkpoint), *paths])
    reference = predictions(text) if ok else {}
    if ok:
        finite = len(reference) == len(files) and all(math.isfinite(p) for r in reference.values() for p in r.values())
        check.record("predict", "pass" if finite else "fail", seconds, f"{len(reference)} of {len(files)} files scored")

    evaluation = check.work / "evaluation"
    evaluate = [*ser, "evaluate", "--out", str(evaluation)]
    device_note = "on the device"
    if takes_option([*ser, "evaluate"], "--device"):
        evaluate += on_device
    else:
        device_note = "on the CPU: ser evaluate takes no --device"
    ok, _, seconds = check.run("evaluate", [*evaluate, str(checkpoint), *data_overrides(check, corpus)])
    if ok:
        finite, detail = finite_metrics(evaluation, ("test/uar",))
        check.record("evaluate", "pass" if finite else "fail", seconds, f"{detail} ({device_note})")

    hf = check.work / "export-hf"
    ok, _, seconds = check.run("export-hf", [*ser, "export", str(checkpoint), str(hf), "--format", "hf"])
    if ok:
        ok, text, more = check.run("export-hf-predict", [*ser, "predict", "--json", *on_device, str(hf), *paths])
        if ok:
            difference = largest_difference(reference, predictions(text))
            status = "pass" if difference <= EXPORT_TOLERANCE else "fail"
            check.record(
                "export-hf",
                status,
                seconds + more,
                f"on {check.device}: probabilities within {difference:.2g} of the checkpoint's",
            )

    onnx_file = check.work / "model.onnx"
    ok, _, seconds = check.run("export-onnx", [*ser, "export", str(checkpoint), str(onnx_file), "--format", "onnx"])
    if ok:
        ok, text, more = check.run("onnxruntime", python(__file__, "--onnx-cpu", str(onnx_file), *paths))
        if ok:
            difference = largest_difference(reference, predictions(text))
            status = "pass" if difference <= EXPORT_TOLERANCE else "fail"
            detail = f"CPU provider, probabilities within {difference:.2g} of the checkpoint's"
            check.record("export-onnx", status, seconds + more, detail)


def onnx_on_cpu(model: str, paths: list[str]) -> None:
    """Print ``ser predict --json`` lines for ``paths`` scored by ``model`` with onnxruntime's CPU provider."""
    from ser.export import OnnxClassifier
    from ser.inference import as_scorer, predict

    scorer = as_scorer(OnnxClassifier(model, providers=["CPUExecutionProvider"]))
    for prediction in predict(scorer, paths):
        print(json.dumps(prediction.to_dict()))


# --- 3. training benchmarks, 4. prediction benchmark ---------------------------------------------------


def section_body(path: Path, name: str) -> str | None:
    """The body of section ``## name`` of a benchmarks file, its ``Measured`` line kept."""
    if not path.is_file():
        return None
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", path.read_text(), re.S | re.M)
    return match.group(1).strip() if match else None


def table_row(body: str, label: str) -> list[str]:
    for line in body.splitlines():
        if line.startswith(f"| {label}"):
            return [cell.strip() for cell in line.strip().strip("|").split("|")[1:]]
    return []


def train_benchmark(check: Check, size: str, compiled: bool, levers: bool) -> None:
    """``benchmarks/train.py`` at ``size``; the compile side in a run of its own, after the others.

    Compiling XLSR-53 can take longer than the part's time: in a run of its own it cannot cost the
    figures of the other sides (a run ends with its slowest side, and one failed side ends it).
    """
    check.start_part(f"train-{size}")
    if check.cpu and size == "base":
        check.record("benchmark", "skip", 0.0, "skipped on CPU (the CPU runs the training benchmark once, tiny)")
        return
    precision = "32-true" if check.cpu else "16-mixed"
    sides = "ser,recipe,ser-cudnn,ser-fused-adam" if levers else "ser,recipe"
    names = f"ser {precision} / recipe" + (" / ser cuDNN benchmark / ser fused Adam" if levers else "")
    # the first run gets 60% of the part's time when the compile run follows, so that it has some left
    limit = 0.6 * check.left() if compiled else None
    variants = ["--variant", "trainer.precision=bf16-mixed"]
    training_benchmark(check, "benchmark", size, sides, variants, names + " / ser bf16-mixed", limit)
    if compiled:
        variants = ["--variant", "compile=true"]
        training_benchmark(check, "compile", size, "ser,recipe", variants, f"ser {precision} / recipe / ser compile")
    elif check.cpu:
        check.record("compile", "skip", 0.0, "skipped on CPU (Inductor's first build takes minutes there)")
    else:
        check.record("compile", "skip", 0.0, "torch.compile builds no kernel here (see preflight/compile)")


def training_benchmark(
    check: Check, step: str, size: str, sides: str, variants: list[str], names: str, limit: float | None = None
) -> None:
    """One run of ``benchmarks/train.py --flops``: its section kept, its figures on the step's line."""
    output = check.work / f"train-{size}-{step}.md"
    command = python(
        "benchmarks/train.py", "--sides", sides, *variants, "--seeds", "42", "--flops", "--output", str(output)
    )
    if check.cpu:
        # 16-mixed is CUDA's; the notional peak only exercises the MFU arithmetic; one actor of its own is
        # a quarter of the clips that the recipe's side decodes and ser's prepares
        command += ["--quick", "--device", "cpu", "--precision", "32-true", "--peak-tflops", "1", "--fork-sides"]
        command += ["--steps", str(check.sizes.benchmark_steps["tiny"]), "--batch-size", str(check.sizes.batch_size)]
        command += ["--actors", str(check.sizes.benchmark_actors)]
    else:
        command += ["--encoder-config", size, "--device", "cuda", "--precision", "16-mixed"]
        command += ["--steps", str(check.sizes.benchmark_steps[size])]
        corpus = check.work / "corpus"  # the e2e part's, when it made one
        command += ["--root", str(corpus)] if corpus.is_dir() else ["--actors", str(check.sizes.benchmark_actors)]
    ok, _, seconds = check.run(step, command, limit=limit)
    if not ok:
        return
    body = section_body(output, "train")
    if body is None:
        check.record(step, "fail", seconds, f"no train section in {output.name}")
        return
    title = f"train, {'tiny (--cpu)' if check.cpu else size}" + (", compile" if step == "compile" else "")
    check.sections[title] = body
    figures = []
    for label, short in (
        ("training throughput (clips/s)", "clips/s"),
        ("peak GPU memory (MiB)", "GPU MiB"),
        ("model FLOPs utilisation (MFU)", "MFU"),
        ("padded encoder frames", "padded"),
    ):
        cells = table_row(body, label)
        if cells:
            figures.append(f"{short} {' / '.join(cells)}")
    check.record(step, "pass", seconds, f"({names}): " + "; ".join(figures))


def predict_benchmark(check: Check) -> None:
    check.start_part("predict")
    command = python("benchmarks/predict.py")
    if not takes_option(command, "--device"):
        check.record("benchmark", "skip", 0.0, "predict.py has no --device yet")
        return
    output = check.work / "predict.md"
    if check.cpu:
        command += ["--device", "cpu", "--encoder-config", "tiny", "--quick", "--output", str(output)]
        command += ["--files", str(check.sizes.predict_files)]
        # the e2e part's checkpoint, when it made one, spares training one (predict.py's own is tested on its own)
        checkpoint = next(iter(sorted(check.work.glob("run-*/checkpoints/last.ckpt"))), None)
        command += ["--checkpoint", str(checkpoint)] if checkpoint else []
    else:
        command += ["--device", "cuda", "--encoder-config", "large", "--output", str(output)]
    ok, _, seconds = check.run("benchmark", command)
    if not ok:
        return
    body = section_body(output, "predict")
    if body is None:
        check.record("benchmark", "fail", seconds, f"no predict section in {output.name}")
        return
    check.sections["predict, " + ("tiny (--cpu)" if check.cpu else "large")] = body
    figures = [
        f"{label} {cells[0]} clips/s ({cells[1]})"
        for label in ("ser predict",)
        if len(cells := table_row(body, label)) > 1
    ]
    check.record("benchmark", "pass", seconds, "; ".join(figures) or "section written")


# --- the section and the folder ----------------------------------------------------------------------


def write_outputs(check: Check, command: str, seconds: float) -> Path:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from report import write_section

    counts = {status: sum(step.status == status for step in check.steps) for status in ("pass", "fail", "skip")}
    facts = "; ".join(f"{key} {value}" for key, value in check.facts.items())
    lines = [
        f"`{command}`: {counts['pass']} steps passed, {counts['fail']} failed, {counts['skip']} skipped, "
        f"in {seconds:.0f} s. {facts}.",
        "",
        "| step | result | seconds | figures |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.detail.replace('|', '/')} |" for s in check.steps]
    for title, body in check.sections.items():
        body = re.sub(r"^Measured .*\n+", "", body)  # the gpu section's own says where
        lines += ["", f"### {title}", "", body]
    section = write_section("gpu", "\n".join(lines), check.out / "BENCHMARKS.md")
    (check.out / "summary.txt").write_text("\n".join(step.line() for step in check.steps) + "\n")
    with tarfile.open(check.out / "gpu-check.tar.gz", "w:gz") as archive:
        for path in sorted(check.logs.iterdir()):
            archive.add(path, arcname=path.name)
        for path in sorted(check.work.glob("run-*/metrics.json")) + sorted(check.work.glob("evaluation/metrics.json")):
            archive.add(path, arcname=f"{path.parent.name}-metrics.json")
        for path in sorted(check.work.glob("*.md")):
            archive.add(path, arcname=path.name)
    return section


def merge(section_file: Path) -> None:
    """Copy the ``gpu`` section of a check's BENCHMARKS.md into the repository's, as it is."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from report import BENCHMARKS_MD, replace_section

    body = section_body(section_file, "gpu")
    if body is None:
        raise SystemExit(
            f"error: {section_file} has no '## gpu' section: give the BENCHMARKS.md of a check's --out folder"
        )
    print(f"written to {replace_section('gpu', body, BENCHMARKS_MD)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="on the CPU at tiny sizes: the check of the check")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("gpu-check"),
        metavar="DIR",
        help="an empty or new folder for it all (default gpu-check/)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help=f"seconds for the whole check, shared out in proportion (default {sum(GPU_BUDGET.values())} on a GPU, "
        f"{sum(CPU_BUDGET.values())} with --cpu)",
    )
    parser.add_argument("--only", metavar="PART,...", help="run these parts alone (after the preflight)")
    parser.add_argument(
        "--levers", action="store_true", help="training benchmarks with cuDNN benchmark mode and fused Adam sides too"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (runs, exports, corpus)")
    parser.add_argument("--merge", type=Path, metavar="BENCHMARKS_MD", help="copy its gpu section into BENCHMARKS.md")
    parser.add_argument("--onnx-cpu", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--fork-server", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.fork_server:
        fork_server()
        return 0
    if args.onnx_cpu:
        onnx_on_cpu(args.onnx_cpu[0], args.onnx_cpu[1:])
        return 0
    if args.merge:
        merge(args.merge)
        return 0
    budget = dict(CPU_BUDGET if args.cpu else GPU_BUDGET)
    args.only = args.only.split(",") if args.only else []
    unknown = set(args.only) - set(budget) - {"preflight"}
    if unknown:
        raise SystemExit(f"error: --only {','.join(sorted(unknown))}: the parts are {', '.join(budget)}")
    if args.budget:
        scale = args.budget / sum(budget.values())
        budget = {part: seconds * scale for part, seconds in budget.items()}
    out = args.out.resolve()
    if out.is_dir() and any(out.iterdir()):
        raise SystemExit(f"error: --out {out} is not empty: give a new folder, or empty it")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ser-gpu-check-"))
    check = Check(out=out, work=work, cpu=args.cpu, budget=budget, sizes=CPU_SIZES if args.cpu else GPU_SIZES)
    command = shlex.join(["bash", "benchmarks/gpu.sh", *sys.argv[1:]])
    started = time.monotonic()
    check.say(f"{command}: scratch folder {work}, results in {out}")
    section = None
    try:
        if preflight(check):
            check.forks = Forks() if args.cpu else None
            compiled = compile_works(check)  # without it the training benchmarks leave their compile side out
            parts = {
                "e2e": end_to_end,
                "train-large": lambda c: train_benchmark(c, "large", compiled, args.levers),
                "train-base": lambda c: train_benchmark(c, "base", compiled, args.levers),
                "predict": predict_benchmark,
            }
            for name, part in parts.items():
                if args.only and name not in args.only:
                    continue
                try:
                    part(check)
                except Exception as error:  # noqa: BLE001 - one part's defect must not stop the others
                    check.record("error", "fail", 0.0, f"{type(error).__name__}: {error}")
                # after every part, so that a check cut short by its caller still leaves what it found
                section = write_outputs(check, command, time.monotonic() - started)
        else:
            try:
                section = write_outputs(check, command, time.monotonic() - started)
            except ImportError:  # the section names the machine through torch; the step lines say what is missing
                (out / "summary.txt").write_text("\n".join(step.line() for step in check.steps) + "\n")
    finally:
        if check.forks is not None:
            check.forks.close()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    check.say("\n=== summary")
    for step in check.steps:
        check.say(step.line())
    failed = sum(step.status == "fail" for step in check.steps)
    where = f"section in {section}" if section else f"no section without the libraries; log in {out / 'gpu.log'}"
    check.say(f"{len(check.steps)} steps, {failed} failed, in {time.monotonic() - started:.0f} s; {where}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
