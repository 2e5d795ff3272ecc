"""Running one graded notebook: nbval in a subprocess, in a private folder, against a pristine copy.

:func:`execute` takes a pristine slot (:class:`labkit.course.isolation.Slots`), writes the
notebook built for the submission into a private folder, and runs ``pytest --nbval-lax`` on it
in a new process session with a private ``HOME`` (:func:`labkit.course.isolation.run_env`).
Per-cell results come back only over a pipe, signed with a key the kernel never sees
(:mod:`labkit.course.nbval_hooks`). A run that changed its slot, or whose folder another run
removed, runs once more on the restored copy, with no other notebook running; :class:`Watch`
compares the grader's own checkout after every run and names who was running when it changed. When a run ends (or outlives its
time limit), :func:`kill` ends its kernels and whatever they started, unless that left their
sessions. :mod:`labkit.course.grade` schedules the runs and scores them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat

from labkit.course.gradebook import NotebookResult, kernel_never_ran, read_records
from labkit.course.isolation import Slots, Snapshot, differences, remove_tree, run_env
from labkit.course.nbval_hooks import clip
from labkit.course.graded import PRISTINE, Graded
from labkit.course.prepare import Check


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Run:
    """One submission to run: the notebook built for it, and what its run reported."""

    result: NotebookResult
    checks: list[Check]
    graded: Graded
    key: str  # its files' stem under --out: STUDENT/NOTEBOOK
    findings: dict = None  # "reuse": {exercise: [Finding]}, "suspicious": [Finding]
    records: dict | None = None
    pids: list | None = None
    forged: int = 0
    log: str = ""
    killed: bool = False
    proc: subprocess.Popen | None = None
    checkout: tuple[list[str], int] | None = None  # the grader's checkout changed while this ran: (what, runs)


class Watch:
    """The grader's own labkit and data, compared after every run with how they were; who ran meanwhile.

    Every run in flight since the last comparison that found nothing is a suspect of the next change
    found: with ``--jobs 1`` that is exactly the run that made it.
    """

    def __init__(self, snapshot: Snapshot):
        self.snapshot, self.lock = snapshot, threading.Lock()
        self.last = snapshot.source_digest
        self.running: dict[str, Run] = {}
        self.window: dict[str, Run] = {}
        self.changes: list[str] = []
        self.gate = threading.Condition()
        self.sharing = 0  # runs of nbval in flight side by side
        self.solo = 0  # runs waiting to run again alone, or running so
        self.one_alone = False

    @contextmanager
    def shared(self):
        """A first run: side by side with up to ``--jobs`` others, unless one is waiting to run alone."""
        with self.gate:
            self.gate.wait_for(lambda: self.solo == 0)
            self.sharing += 1
        try:
            yield
        finally:
            with self.gate:
                self.sharing -= 1
                self.gate.notify_all()

    @contextmanager
    def alone(self):
        """A second run, after its copy or folder changed: with no other notebook running, so that
        only the notebook itself can change them again (a run ends its processes when it ends)."""
        with self.gate:
            self.solo += 1
            self.gate.wait_for(lambda: self.sharing == 0 and not self.one_alone)
            self.one_alone = True
        try:
            yield
        finally:
            with self.gate:
                self.one_alone = False
                self.solo -= 1
                self.gate.notify_all()

    def started(self, run: Run) -> None:
        with self.lock:
            self.running[run.key] = self.window[run.key] = run

    def ended(self, run: Run) -> None:
        with self.lock:
            state = self.snapshot.source_state()
            diff = differences(state, self.last)
            if diff:
                self.last = state
                self.changes += diff
                for suspect in self.window.values():
                    suspect.checkout = (diff, len(self.window))
            self.running.pop(run.key, None)
            self.window = dict(self.running)


def child_env(jobs: int) -> dict[str, str]:
    from labkit import runtime

    env = dict(os.environ)
    env["LABKIT_MODE"] = runtime.MODE  # every kernel grades in the grader's mode
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only nbval and our hooks, whatever else is installed
    env.setdefault("LABKIT_TIMING", "brief")  # benchmark cells check their kernels; their timings grade nothing
    threads = str(max(1, cores() // jobs))  # kernels running side by side share the cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    return env


def execute(run: Run, slots: Slots, watch: Watch, base_env: dict, cell_timeout: float, timeout: float,
             stop: threading.Event) -> str:
    """Run nbval over one notebook in a private folder against a pristine slot; return why it could not run."""
    if stop.is_set():
        return "grading was interrupted"
    slot = slots.take()
    private = Path(tempfile.mkdtemp(prefix="lk-run-"))
    watch.started(run)
    try:
        before = slots.check(slot)  # a slot changed by another run is rewritten before this one uses it
        pristine = slots.roots[slot]
        work, notebook = private / "work", private / "work" / "notebook.ipynb"
        text = nbformat.writes(run.graded.notebook).replace(PRISTINE, str(pristine).replace("\\", "/"))

        def setup() -> dict:
            remove_tree(work)
            work.mkdir(parents=True)
            notebook.write_text(text, encoding="utf-8")
            (work / "pytest.ini").write_text("[pytest]\n")  # shields the run from any outer config
            return run_env(base_env, pristine, private)

        with watch.shared():
            env = setup()
            problem = _run_pytest(run, notebook, work, env, cell_timeout, timeout, stop)
            changed = slots.check(slot)
            lost = not notebook.is_file()  # another run can delete this run's private folder, as this one can
            unstarted = kernel_never_ran(run.records)
        if (changed or lost or unstarted) and not stop.is_set():
            # Changed by this notebook, or by another run reaching into this slot or folder, or no cell ran at
            # all: run it once more, alone, on the restored copy. Only a notebook that changes the copy again
            # is marked tampered.
            why = (f"the pristine copy changed during this run ({changed[:5]})" if changed
                   else "this run's private folder was removed during the run" if lost
                   else "its kernel did not start, so no cell ran")
            run.log += f"\n[labkit grade] {why}; run again, alone\n"
            first_log = run.log
            run.records, run.pids, run.forged, run.killed = None, None, 0, False
            with watch.alone():
                slots.check(slot)  # restored again: other runs went on while this one waited
                env = setup()
                problem = _run_pytest(run, notebook, work, env, cell_timeout, timeout, stop)
                changed = slots.check(slot)
            run.log = first_log + run.log
        if changed:
            run.result.tampered = ("the pristine copy of labkit changed while this notebook ran ("
                                   + "; ".join(changed[:5]) + (" …" if len(changed) > 5 else "")
                                   + "); it was restored for the next notebook")
        if before:
            run.log += f"\n[labkit grade] the slot had changed before this run and was restored: {before[:5]}\n"
        return problem
    finally:
        watch.ended(run)
        remove_tree(private)
        slots.give(slot)


def _run_pytest(run: Run, notebook: Path, work: Path, env: dict, cell_timeout: float, timeout: float,
                stop: threading.Event) -> str:
    key = secrets.token_hex(32).encode()
    report_r, report_w = os.pipe()
    key_r, key_w = os.pipe()
    os.write(key_w, key)
    os.close(key_w)
    cmd = [sys.executable, "-m", "pytest", str(notebook),
           "-p", "nbval.plugin", "-p", "labkit.course.nbval_hooks", "-p", "no:cacheprovider",
           "-c", str(work / "pytest.ini"), "--rootdir", str(work),
           "--nbval-lax", "--nbval-current-env", f"--nbval-cell-timeout={cell_timeout:g}",
           f"--labkit-report-fd={report_w}", f"--labkit-key-fd={key_r}", "-q", "--color=no"]
    lines: list[str] = []
    output: list[bytes] = []
    run.result.started = time.time()
    try:
        proc = run.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=env, cwd=str(work),
                                           start_new_session=True, pass_fds=(report_w, key_r))
    except OSError as exc:
        for fd in (report_r, report_w, key_r):
            os.close(fd)
        return f"could not run pytest: {exc}"
    os.close(report_w)
    os.close(key_r)

    def read_reports():
        size = 0
        with os.fdopen(report_r, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                size += len(line)
                if size > 64_000_000:  # far beyond what nbval_hooks sends (clipped records): a flood, not kept
                    if lines[-1:] != ["flood -\n"]:
                        lines.append("flood -\n")  # counted as forged
                    continue
                lines.append(line)
                if '"kernel_pid"' in line:  # known at once, so a run past --timeout can end its kernel
                    run.pids = read_records(lines, key)[1]

    def read_output():
        kept = 0
        for chunk in iter(lambda: proc.stdout.read(65536), b""):
            if kept < 4_000_000:  # a notebook printing without end fills no disk
                output.append(chunk)
                kept += len(chunk)

    readers = [threading.Thread(target=read_reports, daemon=True), threading.Thread(target=read_output, daemon=True)]
    for t in readers:
        t.start()
    try:
        try:
            if stop.is_set():  # interrupted while this run was starting
                raise subprocess.TimeoutExpired(cmd, 0)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.killed = True
    finally:
        # finished in time or not, nothing the run started outlives it (a process a cell left running
        # would otherwise go on acting after the grader reads this run's results)
        known = list(run.pids or [])
        kill(proc, known)
        run.result.finished = time.time()
    for t in readers:
        t.join(timeout=30)  # a kernel still holding the pipes open (it was killed) can't stall the batch
    run.records, pids, run.forged = read_records(list(lines), key)
    run.pids = pids
    end_sessions(set(pids) - set(known))  # a kernel whose pid arrived only now
    run.log = clip(b"".join(output).decode("utf-8", errors="replace"), 200_000)
    if proc.returncode not in (0, 1) and not run.killed and not run.records:
        return f"nbval did not run the notebook (pytest exit status {proc.returncode}; see logs/{run.key}.txt)"
    return ""


def end_sessions(sessions: set[int]) -> None:
    """SIGKILL every process of the process sessions (or groups) led by ``sessions``, never the grader's own.

    pytest runs in a session of its own and jupyter_client starts each kernel in another: whatever a
    cell starts stays in its kernel's session unless it calls ``setsid`` itself. Linux (``/proc``) only.
    """
    mine = {os.getpid(), os.getsid(0), os.getpgrp()}
    sessions = {s for s in sessions if s > 1} - mine
    if not sessions or not os.path.isdir("/proc"):
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold ")"
            if int(fields[2]) in sessions or int(fields[3]) in sessions:  # process group, session
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            pass  # gone meanwhile, or not ours to signal


def kill(proc: subprocess.Popen, pids: list[int]) -> None:
    """End a notebook's run: its kernels (each leads a session of its own), pytest's, and what they started."""
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    end_sessions({proc.pid, *pids})
    proc.wait()


__all__ = ["Run", "Watch", "child_env", "cores", "end_sessions", "execute", "kill"]
