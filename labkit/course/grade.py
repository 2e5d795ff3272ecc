"""``labkit grade``: grade submitted notebooks through nbval and write a gradebook and feedback.

For each submitted notebook: match it to its master in ``solutions/`` (see
:mod:`labkit.course.prepare`), build the notebook to grade from the master (the student's
exercise cells and extra cells, the master's own code and its checks, each check run against
check modules loaded fresh: :mod:`labkit.course.graded`), read its code for reused solutions and suspicious lines
(:mod:`labkit.course.reuse`, :mod:`labkit.course.suspicious`), then execute it in a fresh kernel with
``pytest --nbval-lax`` in a subprocess (a per-cell and a per-notebook time limit; several notebooks at once), against a
pristine read-only copy of labkit verified after every notebook (:mod:`labkit.course.runner`,
:mod:`labkit.course.isolation`).
Per-cell results come only from the pytest process, over a pipe (:mod:`labkit.course.nbval_hooks`).
nbval runs every cell even after one fails or is interrupted for running too long, so one broken exercise costs only its own points; one broken or hanging
submission never stops the batch. Results (see :mod:`labkit.course.gradebook`) go to::

    OUT/gradebook.csv          student, notebook, exercise, points, possible, status, submission
    OUT/totals.csv             one line per student and notebook
    OUT/results.json           everything, with each run's start and end times
    OUT/feedback/STUDENT/NOTEBOOK.md    the score and each failed check's message
    OUT/prepared/, OUT/logs/  the notebooks as graded and each run's output, written after the batch

Submissions are untrusted code: run the grader in a container or a VM (docs/instructors.md).
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import nbformat

from labkit.course import reuse, suspicious
from labkit.course.gradebook import NotebookResult, error_rows, safe_name, score, write_outputs
from labkit.course.isolation import PACKAGE, Slots, Snapshot, remove_no_fallback
from labkit.course.graded import PRISTINE, build_graded
from labkit.course.prepare import GradeError, Masters, find_submissions
from labkit.course.runner import Run, Watch, child_env, cores, execute, kill
from labkit.paths import ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                        help="submitted notebooks or folders of them: one folder per student "
                             "(alice/02_numba_fused.ipynb) or files named by student (alice_02_numba_fused.ipynb)")
    parser.add_argument("--out", default="grades", help="folder for the gradebook and feedback (default: grades)")
    parser.add_argument("--masters", default=str(ROOT / "solutions"),
                        help="folder of master notebooks (default: the repository's solutions/)")
    parser.add_argument("--jobs", type=int, default=cores(),
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


def grade(submissions: list[str | Path], out: str | Path, *, masters: str | Path = ROOT / "solutions",
          jobs: int | None = None, cell_timeout: float = 300, timeout: float = 1800,
          progress: bool | None = None) -> list[NotebookResult]:
    """Grade every submission under ``submissions``; write the results under ``out`` and return them.

    ``progress=None`` shows a progress bar when stderr is a terminal.
    """
    from tqdm.auto import tqdm

    jobs = cores() if jobs is None else jobs
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
        try:
            graded = build_graded(sub.notebook, book.notebooks[sub.master], sub.master)
        except Exception as exc:  # noqa: BLE001 - a notebook we can't rebuild is an error row
            result.problem = f"not a valid notebook: {type(exc).__name__}: {str(exc)[:200]}"
            result.checks = error_rows(checks, result.problem)
            continue
        run = Run(result, checks, graded, key)
        run.findings = _scan(graded, sub.master)
        runs.append(run)
    hide = None if progress is None else not progress  # tqdm: None hides the bar when not on a terminal
    stop = threading.Event()
    files: dict[str, str] = {}
    base_env = child_env(jobs)
    if not runs:  # nothing to run: every submission is an error row
        write_outputs(results, out, files)
        return results
    try:
        # the masters are watched too: a run that rewrites one would change the next batch's grades
        with Slots(min(jobs, len(runs)), Snapshot(masters=Path(masters))) as slots, \
                ThreadPoolExecutor(max_workers=jobs) as pool, \
                tqdm(total=len(runs), desc="grading", unit="notebook", disable=hide) as bar:
            watch = Watch(slots.snapshot)
            futures = {pool.submit(execute, run, slots, watch, base_env, cell_timeout, timeout, stop): run
                       for run in runs}
            try:
                for future in as_completed(futures):
                    run = futures[future]
                    problem = future.result()
                    _finish(run, problem, cell_timeout=cell_timeout, timeout=timeout)
                    # as graded, its checks pointed at this checkout's labkit (the pristine copies are gone)
                    files[f"prepared/{run.key}.ipynb"] = nbformat.writes(run.graded.notebook).replace(
                        PRISTINE, str(PACKAGE.parent).replace("\\", "/"))
                    files[f"logs/{run.key}.txt"] = run.log
                    r = run.result
                    bar.set_postfix_str(f"{r.student}/{r.notebook} {r.score:g}/{r.possible:g}")
                    bar.update(1)
            except KeyboardInterrupt:  # Ctrl-C: end every run now (their kernels don't get the signal)
                stop.set()
                for future in futures:
                    future.cancel()
                for run in runs:
                    if run.proc is not None and run.proc.poll() is None:
                        kill(run.proc, run.pids or [])
                raise
    finally:
        remove_no_fallback()  # the batch leaves no folder of its own behind
    if watch.changes:
        print("labkit grade: WARNING: the grader's own labkit, data or masters changed while notebooks ran ("
              + "; ".join(watch.changes[:10]) + "). This batch was graded against the copy taken at its start; "
              "restore these files (git status) before grading again. The notebooks that ran meanwhile are "
              "flagged in the gradebook.", file=sys.stderr)
    write_outputs(results, out, files)
    return results


def _scan(graded: Graded, master: str) -> dict:
    """Reused solutions (per exercise) and suspicious lines in the student's code of ``graded``."""
    import importlib

    try:
        solutions = getattr(importlib.import_module(f"labkit.checks.nb{master[:2]}"), "SOLUTIONS", {})
    except Exception:  # noqa: BLE001 - a master with no check module of its own (the tests' tiny masters)
        solutions = {}
    aliases: dict[str, str] = {}
    for cell in graded.notebook.cells:  # every import of the notebook as graded, in order
        tree = reuse.parse(cell.source) if cell.cell_type == "code" else None
        if tree is not None:
            reuse.collect_aliases(tree, aliases)
    found = {"reuse": {}, "suspicious": []}
    student = sorted([*((n, src) for n, src in graded.exercises.values()), *graded.extras])
    for exercise, (number, source) in graded.exercises.items():
        targets = reuse.solution_objects(solutions.get(exercise, ()))
        names = reuse.exercise_names(source)
        hits = reuse.find_reuse(source, number, targets, aliases)
        for n, src in graded.extras:  # an extra cell that (re)defines the exercise's names is part of it
            if names and reuse.defines_any(src, names):
                hits += reuse.find_reuse(src, n, targets, aliases)
        if hits:
            found["reuse"][exercise] = hits
    for number, source in student:
        found["suspicious"] += suspicious.find_suspicious(source, number, aliases)
    return found


def _finish(run: Run, problem: str, *, cell_timeout: float, timeout: float) -> None:
    """Score one run: from its verified records, then reuse, suspicious lines and tampering."""
    r = run.result
    if problem:
        r.checks, r.problem = error_rows(run.checks, problem), problem
        return
    score(r, run.graded.notebook, run.checks, run.records or {}, killed=run.killed,
          cell_timeout=cell_timeout, timeout=timeout, origins=run.graded.origins)
    r.kernel_pids = list(run.pids or [])
    held = ""  # the reason passed checks wait for an instructor, if any
    if run.checkout:
        what, runs = run.checkout
        note = "the grader's own labkit, data or masters changed while this notebook ran (" + "; ".join(what[:5]) + ")"
        if runs == 1:
            r.tampered = "; ".join(filter(None, [r.tampered, note]))
        else:
            held = (f"{note}, beside {runs - 1} other notebook(s): any of them may have done it "
                    "(grade them again with --jobs 1 to find which)")
            r.flags.append(f"checkout changed: {held}")
    if run.forged:
        r.tampered = "; ".join(filter(None, [r.tampered, f"{run.forged} result line(s) reached the grader from "
                                             "outside the grading process (forged results)"]))
    if r.tampered:
        r.flags.append(f"tampered: {r.tampered}")
        for c in r.checks:
            c.points, c.status, c.message = 0.0, "tampered", r.tampered
        return
    for c in r.checks:
        hits = run.findings["reuse"].get(c.exercise)
        if hits:
            c.points, c.status = 0.0, "reused-solution"
            c.message = ("your answer uses labkit's own implementation of this exercise, not your code:\n"
                         + "\n".join(h.describe() for h in hits))
            r.flags += [f"reused-solution {c.exercise}: {h.describe()}" for h in hits]
    flagged = run.findings["suspicious"]
    if flagged:
        r.flags += [f"suspicious: {f.describe()}" for f in flagged]
        held = "\n".join(filter(None, [held, *(f.describe() for f in flagged)]))
    if held:
        for c in r.checks:
            if c.status == "passed":
                c.points, c.status = 0.0, "suspicious"
                c.message = ("the check passed, but your notebook has code that reaches into what grades it; "
                             "the points are held until an instructor has read it:\n" + held)
    stub = {ex for ex, (_, src) in run.graded.exercises.items() if "NotImplementedError" in src
            and "your code here" in src}
    for c in r.checks:
        if c.status == "failed" and c.exercise in stub and "not started" not in c.message:
            c.message = f"not started: your exercise cell still raises NotImplementedError\n{c.message}"
