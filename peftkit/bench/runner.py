"""``peftkit bench``: every row trained under the same budget, each run in a worker process of its own.

The output folder holds one JSON record per finished run (``runs/``, written atomically), the workers'
logs (``logs/``), and, when all runs are done, ``bench.json`` (settings, environment, every record and
the per-row summary), ``bench.md`` (the table) and the plots. Run again with the same folder and the
same settings, a bench continues where it stopped: finished runs (failed rows included) are read back,
not repeated; rows or seeds added since run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from peftkit.bench.rows import BenchRow
from peftkit.bench.worker import PEFT
from peftkit.core.errors import ConfigError, require_extra
from peftkit.core.registry import method_form, quantized_forms
from peftkit.recipes.training import FULL_FINE_TUNING, TrainOptions
from peftkit.utils.memory import FIXED_MMAP_THRESHOLD

SETTINGS_FILE = "bench-settings.json"
PEFTKIT = "peftkit"


@dataclass
class BenchSettings:
    """The budget and data every row shares (a folder's runs are only reused under the same settings)."""

    model: str | None = None
    train: str | None = None
    eval: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    epochs: float = 1.0
    max_steps: int | None = 50  # overrides epochs
    batch_size: int = 32
    max_length: int = 128
    device: str = "cpu"
    bf16: bool = False
    threads: int | None = None  # CPU threads per run (default: torch's)


@dataclass(frozen=True)
class Job:
    row: BenchRow
    seed: int
    implementation: str = PEFTKIT

    @property
    def name(self) -> str:
        twin = "-peft" if self.implementation == PEFT else ""
        return f"{self.row.slug}{twin}-seed{self.seed}"

    @property
    def title(self) -> str:
        return f"{self.row.label}{' (peft)' if self.implementation == PEFT else ''}, seed {self.seed}"


@dataclass
class BenchRun:
    """Every record of a bench, in row order."""

    settings: BenchSettings
    seeds: list[int]
    records: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def peft_has(row: BenchRow) -> bool:
    """Whether Hugging Face peft has the row's method (a peft twin is run with ``--vs-peft``)."""
    try:
        return method_form(row.method)[0].peft_reads
    except ConfigError:
        return False


def bench_jobs(rows: list[BenchRow], seeds: list[int], vs_peft: bool) -> list[Job]:
    jobs = []
    for row in rows:
        for seed in seeds:
            jobs.append(Job(row, seed))
            if vs_peft and row.method != FULL_FINE_TUNING and peft_has(row):
                jobs.append(Job(row, seed, PEFT))
    return jobs


def check_settings(output: Path, settings: BenchSettings) -> None:
    """Record the settings in a new folder; in one with runs, they must be the same."""
    file = output / SETTINGS_FILE
    wanted = dataclasses.asdict(settings)
    if file.is_file():
        saved = json.loads(file.read_text())
        changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in wanted.items() if saved.get(key) != value]
        if changed:
            raise ConfigError(f"{output} holds a bench run with other settings ({'; '.join(changed)}); "
                              f"use another --output to start a new one")
        return
    output.mkdir(parents=True, exist_ok=True)
    write_atomically(file, wanted)


def write_atomically(path: Path, value) -> None:
    """Write JSON to a temporary file and rename it over ``path``: a reader sees the old or the new file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=2))
    os.replace(temporary, path)


def job_input(job: Job, settings: BenchSettings) -> dict:
    budget = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("device", "threads")}
    options = TrainOptions(**budget, method=job.row.method, method_options=dict(job.row.options), seed=job.seed)
    return {"options": dataclasses.asdict(options), "implementation": job.implementation,
            "threads": settings.threads}


def worker_environment(settings: BenchSettings) -> dict:
    env = {**os.environ, **FIXED_MMAP_THRESHOLD, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if settings.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def check_bench(rows: list[BenchRow], settings: BenchSettings, seeds: list[int]) -> dict[str, str]:
    """Every row checked before the first runs: the budget's values, the data files and columns, the model
    folder, each method, its options and the modules they hit (planned on the model, changing nothing); a
    ``ConfigError`` naming the row otherwise. A method at its defaults that does not apply to this model
    (LLaMA-Adapter on an encoder) is no error: its row says why (returned: row label -> reason)."""
    from peftkit.core.pretrained import load_sequence_classifier
    from peftkit.core.targets import plan
    from peftkit.recipes.classification import load_task_data
    from peftkit.recipes.training import recipe_config

    if settings.threads is not None and (not isinstance(settings.threads, int) or settings.threads < 1):
        raise ConfigError(f"threads (--threads) must be a whole number ≥ 1, got {settings.threads!r}")
    data = load_task_data(TrainOptions(**job_input(Job(rows[0], seeds[0]), settings)["options"]))
    _, model = load_sequence_classifier(data.model_dir, data.labels.names)
    inapplicable = {}
    for row in rows:
        try:
            if row.method != FULL_FINE_TUNING:
                method_form(row.method)
            options = TrainOptions(**job_input(Job(row, seeds[0]), settings)["options"])
        except ConfigError as exc:
            raise ConfigError(f"bench row '{row.label}': {exc}") from None
        try:
            config = recipe_config(options, "SEQ_CLS", data.model_dir, data.labels.names)
            if config is not None:
                plan(model, config)
        except ConfigError as exc:
            if row.options:
                raise ConfigError(f"bench row '{row.label}': {exc}") from None
            inapplicable[row.label] = f"does not apply to this model: {exc}"
    return inapplicable


def not_runnable(job: Job) -> str | None:
    """Why the job cannot run (its method does not exist, or peft has no such form), or None: such a job
    needs no worker."""
    row = job.row
    if row.method == FULL_FINE_TUNING:
        return None
    if job.implementation == PEFT and row.method in quantized_forms():
        return "peft's QLoRA quantises with bitsandbytes, which peftkit does not install; not compared"
    try:
        method_form(row.method)
    except ConfigError as exc:
        return str(exc)
    return None


def run_job(job: Job, settings: BenchSettings, worker: WorkerProcess, log: Path, steps: tqdm,
            inapplicable: str | None = None) -> dict:
    """Run one job in ``worker``, following its steps on ``steps``; its record (``inapplicable``: why the
    method does not apply to the model, so it is not run)."""
    started = time.perf_counter()
    result = {"error": reason} if (reason := inapplicable or not_runnable(job)) else None
    if result is None:
        result = worker.run(job_input(job, settings), log, steps)
    return {"row": job.row.label, "method": job.row.method, "options": job.row.options, "seed": job.seed,
            "implementation": job.implementation, "seconds": time.perf_counter() - started, **result}


class WorkerProcess:
    """``peftkit.bench.worker`` processes for the jobs: a fresh one per job (its peak memory is the job's),
    or with ``shared`` one for every job (CUDA: the peak is reset per job), restarted if one dies."""

    def __init__(self, settings: BenchSettings, log: Path, shared: bool) -> None:
        self.settings, self.log, self.shared = settings, log, shared  # log: the process's own stderr
        self.process: subprocess.Popen | None = None

    def run(self, job: dict, log: Path, steps: tqdm) -> dict:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        if self.process is not None and self.process.poll() is not None:
            self.close()  # it ended between jobs
        if self.process is None:
            self._start()
        self.process.stdin.write(json.dumps({**job, "log": str(log)}) + "\n")
        self.process.stdin.flush()
        result = None
        for line in self.process.stdout:
            if line.startswith("@step "):
                done, total = (int(n) for n in line.split()[1:3])
                steps.total = total
                steps.update(done - steps.n)
            elif line.startswith("@result "):
                result = json.loads(line[len("@result "):])
                break
        if result is None or not self.shared:
            code = self.close()
            if result is None:
                return {"error": f"the worker stopped (exit code {code}) before reporting; see {log}"}
        return result

    def _start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as errors:
            self.process = subprocess.Popen([sys.executable, "-m", "peftkit.bench.worker"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errors, text=True,
                                            env=worker_environment(self.settings))

    def close(self, kill: bool = False) -> int | None:
        """End the process (it finishes its current job first, unless ``kill``); its exit code."""
        if self.process is None:
            return None
        if kill:
            self.process.kill()
        self.process.stdin.close()
        code = self.process.wait()
        self.process = None
        return code

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.close(kill=error_type is not None)  # interrupted: the bench stops now, its worker too


def run_bench(rows: list[BenchRow], settings: BenchSettings, seeds: list[int], output: str | Path,
              vs_peft: bool = False, one_worker: bool | None = None) -> BenchRun:
    """Run (or finish) the bench in ``output``; the records of all its jobs, in order. ``one_worker``: run
    every job in one worker process (default: on CUDA only, where peak memory is reset per job)."""
    require_extra("matplotlib", "bench", "it draws peftkit bench's plots")  # now, not after the runs
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: this machine has no CUDA device")
    output = Path(output)
    inapplicable = check_bench(rows, settings, seeds)
    check_settings(output, settings)
    started = time.perf_counter()
    jobs = bench_jobs(rows, seeds, vs_peft)
    run = BenchRun(settings, seeds)
    interactive = sys.stderr.isatty()
    shared = settings.device == "cuda" if one_worker is None else one_worker
    with tqdm(total=len(jobs), desc="bench", unit="run", file=sys.stderr, dynamic_ncols=True,
              mininterval=0.5 if interactive else 30) as overall, WorkerProcess(
            settings, output / "logs" / "worker.log", shared) as worker:
        for job in jobs:
            record_file = output / "runs" / f"{job.name}.json"
            overall.set_postfix_str(job.title)
            if record_file.is_file():
                record = json.loads(record_file.read_text())
            else:
                with tqdm(desc=job.title, unit="step", position=1, leave=False, file=sys.stderr,
                          dynamic_ncols=True, mininterval=0.5 if interactive else 30, disable=not interactive) as steps:
                    record = run_job(job, settings, worker, output / "logs" / f"{job.name}.log", steps,
                                     inapplicable.get(job.row.label))
                record_file.parent.mkdir(exist_ok=True)
                write_atomically(record_file, record)
                outcome = record["error"] if "error" in record else f"score {record['score']:.4f}"
                overall.write(f"{job.title}: {outcome}")
            run.records.append(record)
            overall.update()
    run.seconds = time.perf_counter() - started
    return run


def environment(settings: BenchSettings) -> dict:
    """Versions, device and threads, for the JSON file."""
    import torch
    import transformers

    import peftkit

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "peftkit": peftkit.__version__}
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:
        pass
    device = (torch.cuda.get_device_name(0) if settings.device == "cuda"
              else platform.processor() or platform.machine())
    return {"versions": versions, "device": settings.device, "device_name": device,
            "threads": settings.threads or torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform()}
