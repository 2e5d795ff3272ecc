"""Scores from nbval's per-cell results, and the files ``labkit grade`` writes.

Each check of a master becomes one row of the gradebook with a status:

* ``passed``: the restored check cell ran without raising and printed its check's pass line
  (:func:`reported_pass`); full points.
* ``failed``: it raised (a :class:`~labkit.checks.core.CheckFailure`, or e.g. a ``NameError``
  when the exercise cell never defined the function), printed no pass line, or the kernel died;
  no points.
* ``timeout``: the check cell ran past ``--cell-timeout``, or never ran because an earlier cell
  hung the kernel or the notebook ran past ``--timeout``; no points.
* ``error``: the submission could not be graded at all (not a notebook, no matching master,
  the kernel would not start); no points.
* ``reused-solution``: the exercise cell uses labkit's own implementation of that exercise
  (see :mod:`labkit.course.reuse`); no points, the line is in the feedback.
* ``suspicious``: the check passed, but a cell of the student's reaches into what grades it
  (``labkit.checks``, ``sys.modules``, ``builtins``, rebinding labkit attributes...): held at
  no points for the instructor to read the lines given.
* ``tampered``: while this notebook ran, the pristine copy of labkit changed, or something other
  than the grading process sent results; every check of the notebook, no points.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labkit.checks.core import FAIL
from labkit.course.nbval_hooks import clip, sign
from labkit.course.prepare import Check, labkit_meta

STATUSES = ("passed", "failed", "timeout", "error", "reused-solution", "suspicious", "tampered")


@dataclass
class CheckResult:
    exercise: str
    points: float  # earned
    possible: float
    status: str  # one of STATUSES
    message: str = ""  # why it did not pass: the CheckFailure text, the error, the timeout
    output: str = ""  # what the check cell printed (its pass/fail lines)


@dataclass
class NotebookResult:
    student: str
    notebook: str  # the master's name (the file's name when it matches no master)
    submission: str  # the submitted file
    checks: list[CheckResult] = field(default_factory=list)
    problem: str = ""  # why the notebook could not be graded at all
    started: float | None = None  # the nbval process's start and end (seconds since the epoch)
    finished: float | None = None
    cells_started: float | None = None  # first cell's start and last cell's end in the kernel
    cells_finished: float | None = None
    cell_errors: list[dict] = field(default_factory=list)  # the student's own cells that raised
    flags: list[str] = field(default_factory=list)  # suspicious lines, reuse, tampering: for the instructor
    tampered: str = ""  # why the notebook's results are withheld
    kernel_pids: list[int] = field(default_factory=list)  # the run's kernel processes (ended with it)

    @property
    def score(self) -> float:
        return sum(c.points for c in self.checks)

    @property
    def possible(self) -> float:
        return sum(c.possible for c in self.checks)


def read_records(lines: list[str], key: bytes) -> tuple[dict[int, dict], list[int], int]:
    """The per-cell records (by code-cell number) and kernel pids nbval_hooks sent, and how many lines were forged.

    A line whose MAC does not verify under ``key``, or that repeats or skips a sequence number, is
    forged: not from the grading process.
    """
    cells, pids, forged, expect = {}, [], 0, 1
    for line in lines:
        mac, _, payload = line.rstrip("\n").partition(" ")
        if not payload:
            continue
        try:
            ok = hmac_ok(key, mac, payload)
            rec = json.loads(payload) if ok else None
        except (json.JSONDecodeError, UnicodeError, ValueError):
            rec = None
        if rec is None or rec.get("seq") != expect:
            forged += 1
            continue
        expect += 1
        if "kernel_pid" in rec and rec["kernel_pid"]:
            pids.append(int(rec["kernel_pid"]))
        elif "cell" in rec:
            cells.setdefault(int(rec["cell"]), rec)
    return cells, pids, forged


def kernel_never_ran(records: dict[int, dict] | None) -> bool:
    """Whether nbval failed every cell before running it: the kernel did not start (a busy machine,
    a crash in its startup), so the notebook's code never ran and grading it again is fair."""
    return bool(records) and all(r.get("when") == "setup" and r.get("outcome") == "failed" for r in records.values())


def hmac_ok(key: bytes, mac: str, payload: str) -> bool:
    import hmac

    return hmac.compare_digest(mac, sign(key, payload))


def _first_line(source: str) -> str:
    lines = [ln for ln in source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return (lines[0].strip() if lines else "")[:80]


def score(result: NotebookResult, prepared, checks: list[Check], records: dict[int, dict], *, killed: bool,
          cell_timeout: float, timeout: float, origins: list | None = None) -> None:
    """Fill ``result`` from the records of an nbval run over the ``prepared`` notebook.

    ``origins`` (from :func:`~labkit.course.graded.build_graded`) gives, per code cell, the cell's
    number in the student's own notebook, which is what the feedback names.
    """
    code = [c for c in prepared.cells if c.cell_type == "code"]
    if records:
        result.cells_started = min(r["start"] for r in records.values())
        result.cells_finished = max(r["stop"] for r in records.values())
    hung = None  # the first cell that ran past the cell timeout
    for number, cell in enumerate(code):
        rec = records.get(number)
        meta = labkit_meta(cell)
        if "check" not in meta:
            if (rec and rec["outcome"] != "passed" and rec.get("when") == "call"
                    and not rec.get("message", "").startswith("Kernel dead")):
                timed = rec.get("message", "").startswith("Timeout")
                hung = hung or (_first_line(cell.source) if timed else None)
                origin = origins[number] if origins and number < len(origins) else ("", None)
                result.cell_errors.append({"cell": origin[1], "from": origin[0], "line": _first_line(cell.source),
                                           "error": "ran past the cell timeout" if timed else
                                           f"{rec.get('ename') or rec.get('error')}: "
                                           f"{rec.get('evalue') or rec.get('message', '')}".strip()})
            continue
        # a check cell in the prepared notebook is the master's, with the master's metadata
        exercise, points = str(meta["check"]), float(meta.get("points", 1))
        status, message = _status(rec, killed=killed, hung=hung, cell_timeout=cell_timeout, timeout=timeout)
        if status == "passed" and not reported_pass(exercise, rec.get("stdout", "")):
            status, message = "failed", (
                f"the check cell ended without an error, but without the check's pass line (`{exercise}: all N "
                f"properties pass`, and no {FAIL}): something in the notebook hid how the check ended")
        if rec and rec.get("message", "").startswith("Timeout"):
            hung = hung or f"the check for {exercise}"
        result.checks.append(CheckResult(exercise, points if status == "passed" else 0.0, points, status,
                                         clip(message), clip((rec or {}).get("stdout", ""))))
    order = [c.exercise for c in checks]  # rows in the master's order, whatever order the student's cells are in
    result.checks.sort(key=lambda c: order.index(c.exercise) if c.exercise in order else len(order))


def reported_pass(exercise: str, output: str) -> bool:
    """Whether a check cell's ``output`` shows the check passing: the pass line
    :func:`~labkit.checks.core.run_check` prints, and no failed property (✗).

    A cell that raised nothing is not enough: code in the notebook can swallow the check's
    ``CheckFailure`` (an IPython custom exception handler) so that no error reaches nbval.
    """
    lines = output.splitlines()
    passed = any(re.fullmatch(rf"{re.escape(exercise)}: all \d+ properties pass", ln.strip()) for ln in lines)
    return passed and not any(ln.lstrip().startswith(f"{FAIL} ") for ln in lines)


def _status(rec: dict | None, *, killed: bool, hung: str | None, cell_timeout: float,
            timeout: float) -> tuple[str, str]:
    if rec is None:
        if killed:
            return "timeout", f"not run: the notebook ran past the time limit of {timeout:g} s"
        return "error", "not run: nbval stopped before this cell (see the run's log under logs/)"
    if rec["outcome"] == "passed":
        return "passed", ""
    message = rec.get("message", "")
    if rec.get("when") == "setup":
        return "error", f"not run: the kernel could not start ({rec.get('error')}: {message})"
    if message.startswith("Timeout"):
        return "timeout", f"ran past the cell time limit of {cell_timeout:g} s"
    if rec.get("error") == "KernelDied":
        return "failed", message
    if message.startswith("Kernel dead"):
        if rec.get("timed_out"):
            return "timeout", f"not run: the kernel was stopped after `{hung}` ran past the cell time limit"
        return "failed", "not run: the kernel had died in an earlier cell"
    why = f"{rec['ename']}: {rec.get('evalue', '')}" if rec.get("ename") else message
    if hung:
        why += f"\n(an earlier cell, `{hung}`, ran past the cell time limit and was interrupted)"
    return "failed", why


def error_rows(checks: list[Check], problem: str) -> list[CheckResult]:
    """One error row per check of a notebook that could not be graded (one row if it has no master)."""
    return [CheckResult(c.exercise, 0.0, c.points, "error", problem) for c in checks] or \
        [CheckResult("", 0.0, 0.0, "error", problem)]


def _num(x: float) -> str:
    return f"{x:g}"


def safe_name(name: str) -> str:
    """A file-name-safe form of a student's or notebook's name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"


def write_outputs(results: list[NotebookResult], out: Path,
                  files: dict[str, str | bytes] | None = None) -> dict[str, Path]:
    """Write gradebook.csv, totals.csv, results.json and feedback/<student>/<notebook>.md under ``out``.

    ``files`` (relative path -> text): more files to write there (the notebooks as graded, the runs'
    logs). Everything is written here, by the grader, after every run has ended.
    """
    out.mkdir(parents=True, exist_ok=True)
    for rel, data in (files or {}).items():
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8")
    results = sorted(results, key=lambda r: (r.student.lower(), r.notebook))
    paths = {"gradebook": out / "gradebook.csv", "totals": out / "totals.csv", "results": out / "results.json"}
    with open(paths["gradebook"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["student", "notebook", "exercise", "points", "possible", "status", "submission"])
        for r in results:
            for c in r.checks:
                w.writerow([r.student, r.notebook, c.exercise, _num(c.points), _num(c.possible), c.status,
                            r.submission])
    with open(paths["totals"], "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["student", "notebook", "points", "possible", *STATUSES, "flags"])
        for r in results:
            counts = [sum(c.status == s for c in r.checks) for s in STATUSES]
            w.writerow([r.student, r.notebook, _num(r.score), _num(r.possible), *counts, " | ".join(r.flags)])
    paths["results"].write_text(json.dumps([asdict(r) for r in results], indent=1), encoding="utf-8")
    written: set[Path] = set()
    for r in results:
        target = out / "feedback" / safe_name(r.student) / f"{safe_name(r.notebook)}.md"
        n = 1
        while target in written:  # two files of one student for one notebook
            n += 1
            target = target.with_name(f"{safe_name(r.notebook)}-{n}.md")
        written.add(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(feedback(r), encoding="utf-8")
    return paths


def feedback(r: NotebookResult) -> str:
    """The student's feedback for one notebook (markdown): the score, then why each check did not pass."""
    lines = [f"# {r.notebook}: feedback for {r.student}", "",
             f"Submitted file: `{r.submission}`", "", f"**Score: {_num(r.score)} of {_num(r.possible)} points.**", ""]
    if r.problem:
        lines += [f"This submission could not be graded: {r.problem}", ""]
    if r.tampered:
        lines += [f"**Results withheld:** {r.tampered}", ""]
    if r.flags:
        lines += ["For the instructor to review:", ""] + [f"- {f}" for f in r.flags] + [""]
    lines += ["| exercise | points | status |", "| --- | --- | --- |"]
    lines += [f"| {c.exercise or '-'} | {_num(c.points)} / {_num(c.possible)} | {c.status} |" for c in r.checks]
    for c in r.checks:
        if c.status in ("passed", "tampered") or r.problem:
            continue
        lines += ["", f"## {c.exercise}: {c.status}", ""]
        if c.output.strip():
            lines += ["What the check printed:", "", "```", c.output.rstrip(), "```", ""]
        lines += ["Why it did not pass:", "", "```", c.message.rstrip() or "(no message)", "```"]
    if r.cell_errors:
        lines += ["", "## Other cells that did not run cleanly", ""]
        lines += [f"- {'cell ' + str(e['cell']) if e.get('cell') else 'a cell of the master'} (`{e['line']}`): "
                  f"{e['error'].splitlines()[0] if e['error'] else ''}" for e in r.cell_errors]
    return "\n".join(lines) + "\n"
