"""``labkit grade``: grade submitted notebooks through nbval and write a gradebook and feedback.

For each submitted notebook: match it to its master in ``solutions/`` (see
:mod:`labkit.course.prepare`), restore every check cell from the master, then execute it in a
fresh kernel with ``pytest --nbval-lax`` in a subprocess (a per-cell and a per-notebook time
limit; several notebooks at once). nbval runs every cell even after one fails or is interrupted
for running too long, so one broken exercise costs only its own points; one broken or hanging
submission never stops the batch. Results (see :mod:`labkit.course.gradebook`) go to::

    OUT/gradebook.csv          student, notebook, exercise, points, possible, status, submission
    OUT/totals.csv             one line per student and notebook
    OUT/results.json           everything, with each run's start and end times
    OUT/feedback/STUDENT/NOTEBOOK.md    the score and each failed check's message
    OUT/prepared/, OUT/junit/, OUT/logs/  the notebooks as graded, nbval's JUnit XML and output

Submissions are untrusted code: run the grader in a container or a VM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nbformat

from labkit.course.gradebook import NotebookResult, error_rows, read_log, safe_name, score, write_outputs
from labkit.course.nbval_hooks import LOG_ENV
from labkit.course.prepare import Check, GradeError, Masters, find_submissions, restore_checks
from labkit.paths import ROOT


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                        help="submitted notebooks or folders of them: one folder per student "
                             "(alice/02_numba_fused.ipynb) or files named by student (alice_02_numba_fused.ipynb)")
    parser.add_argument("--out", default="grades", help="folder for the gradebook and feedback (default: grades)")
    parser.add_argument("--masters", default=str(ROOT / "solutions"),
                        help="folder of master notebooks (default: the repository's solutions/)")
    parser.add_argument("--jobs", type=int, default=_cores(),
                        help="notebooks graded at once (default: the number of cores, %(default)s here)")
    parser.add_argument("--cell-timeout", type=float, default=300, help="seconds one cell may run (default: 300)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one notebook may run (default: 1800)")


def main(args: argparse.Namespace) -> int:
    """Exit status: 0 when every check was graded, 1 when some are error rows, 2 when grading can't start."""
    try:
        results = grade(args.submissions, args.out, masters=args.masters, jobs=args.jobs,
                        cell_timeout=args.cell_timeout, timeout=args.timeout)
    except GradeError as exc:
        print(f"labkit grade: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labkit grade: interrupted; every run was ended, no gradebook written", file=sys.stderr)
        return 130
    width = max(len(f"{r.student}  {r.notebook}") for r in results)
    for r in sorted(results, key=lambda r: (r.student.lower(), r.notebook)):
        note = f"  ERROR: {r.problem}" if r.problem else ""
        print(f"{r.student}  {r.notebook}".ljust(width), f"{r.score:g} / {r.possible:g}{note}")
    print(f"gradebook: {Path(args.out) / 'gradebook.csv'}; feedback: {Path(args.out) / 'feedback'}")
    return 1 if any(c.status == "error" for r in results for c in r.checks) else 0


@dataclass
class _Run:
    """One prepared notebook and where its nbval run writes."""

    result: NotebookResult
    checks: list[Check]
    prepared: Path
    log: Path
    junit: Path
    output: Path
    killed: bool = False
    proc: subprocess.Popen | None = None


def grade(submissions: list[str | Path], out: str | Path, *, masters: str | Path = ROOT / "solutions",
          jobs: int | None = None, cell_timeout: float = 300, timeout: float = 1800,
          progress: bool | None = None) -> list[NotebookResult]:
    """Grade every submission under ``submissions``; write the results under ``out`` and return them.

    ``progress=None`` shows a progress bar when stderr is a terminal.
    """
    from tqdm.auto import tqdm

    jobs = _cores() if jobs is None else jobs
    if jobs < 1:
        raise GradeError(f"--jobs must be at least 1, got {jobs}")
    out = Path(out)
    book = Masters.load(masters)
    results, runs, taken = [], [], set()
    for sub in find_submissions(list(submissions), book):
        checks = book.checks(sub.master) if sub.master else []
        name = sub.master or sub.path.stem
        if sub.problem:
            results.append(NotebookResult(sub.student, name, str(sub.path), error_rows(checks, sub.problem),
                                          problem=sub.problem))
            continue
        stem = f"{safe_name(sub.student)}/{safe_name(name)}"
        key, n = stem, 1
        while key in taken:  # two files of one student for one notebook: grade both
            n += 1
            key = f"{stem}-{n}"
        taken.add(key)
        result = NotebookResult(sub.student, name, str(sub.path))
        results.append(result)
        run = _Run(result, checks, out / "prepared" / f"{key}.ipynb", out / "logs" / f"{key}.jsonl",
                   out / "junit" / f"{key}.xml", out / "logs" / f"{key}.txt")
        try:
            prepared = restore_checks(sub.notebook, book.notebooks[sub.master])
            for path in (run.prepared, run.log, run.junit):
                path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(prepared, run.prepared)
        except Exception as exc:  # noqa: BLE001 - a notebook we can't rebuild is an error row
            result.problem = f"not a valid notebook: {type(exc).__name__}: {str(exc)[:200]}"
            result.checks = error_rows(checks, result.problem)
            continue
        run.log.unlink(missing_ok=True)
        runs.append((run, prepared))
    if runs:
        (out / "prepared" / "pytest.ini").write_text("[pytest]\n")  # shields the runs from any outer config
    env = _child_env(jobs)
    hide = None if progress is None else not progress  # tqdm: None hides the bar when not on a terminal
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(runs), desc="grading", unit="notebook", disable=hide) as bar:
        futures = {pool.submit(_execute, run, out / "prepared", env, cell_timeout, timeout, stop): (run, nb)
                   for run, nb in runs}
        try:
            for future in as_completed(futures):
                run, prepared = futures[future]
                problem = future.result()
                if problem:
                    run.result.checks, run.result.problem = error_rows(run.checks, problem), problem
                else:
                    score(run.result, prepared, run.checks, run.log, killed=run.killed,
                          cell_timeout=cell_timeout, timeout=timeout)
                r = run.result
                bar.set_postfix_str(f"{r.student}/{r.notebook} {r.score:g}/{r.possible:g}")
                bar.update(1)
        except KeyboardInterrupt:  # Ctrl-C: end every run now (their kernels don't get the signal)
            stop.set()
            for future in futures:
                future.cancel()
            for run, _ in runs:
                if run.proc is not None and run.proc.poll() is None:
                    _kill(run.proc, run.log)
            raise
    write_outputs(results, out)
    return results


def _child_env(jobs: int) -> dict[str, str]:
    from labkit import runtime

    env = dict(os.environ)
    env["LABKIT_MODE"] = runtime.MODE  # every kernel grades in the grader's mode
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only nbval and our hooks, whatever else is installed
    env.pop("PYTEST_ADDOPTS", None)  # options meant for an outer pytest run (e.g. xdist's -n)
    threads = str(max(1, _cores() // jobs))  # kernels running side by side share the cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def _execute(run: _Run, rootdir: Path, env: dict, cell_timeout: float, timeout: float,
             stop: threading.Event) -> str:
    """Run nbval over one prepared notebook; return why it could not run ("" when it did)."""
    cmd = [sys.executable, "-m", "pytest", str(run.prepared.resolve()),
           "-p", "nbval.plugin", "-p", "labkit.course.nbval_hooks", "-p", "no:cacheprovider",
           "-c", str((rootdir / "pytest.ini").resolve()), "--rootdir", str(rootdir.resolve()),
           "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={cell_timeout:g}",
           f"--junitxml={run.junit.resolve()}", "-q", "--color=no"]
    if stop.is_set():
        return "grading was interrupted"
    run.result.started = time.time()
    try:
        with open(run.output, "w", encoding="utf-8") as fh:
            proc = run.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               env={**env, LOG_ENV: str(run.log.resolve())}, start_new_session=True)
            try:
                if stop.is_set():  # interrupted while this run was starting
                    raise subprocess.TimeoutExpired(cmd, 0)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                run.killed = True
                _kill(proc, run.log)
    except OSError as exc:
        return f"could not run pytest: {exc}"
    finally:
        run.result.finished = time.time()
    if proc.returncode not in (0, 1) and not run.killed and not read_log(run.log)[0]:
        return f"nbval did not run the notebook (pytest exit status {proc.returncode}; see {run.output})"
    return ""


def _kill(proc: subprocess.Popen, log: Path) -> None:
    """End a notebook's run: its kernels (each leads a process group of its own), then pytest's group."""
    for pid in read_log(log)[1]:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
