"""A pytest plugin that ``labkit grade`` loads into every nbval run (``-p labkit.course.nbval_hooks``).

nbval runs each code cell of a notebook as one pytest item. This plugin

* appends one JSON line per cell to the file named by ``$LABKIT_GRADE_LOG`` the moment the
  cell has run: its outcome, start and stop times, the error it raised (``ename``/``evalue``:
  for a failed check, the :class:`~labkit.checks.core.CheckFailure` text) and its printed
  output. Lines written before the grader had to kill a notebook that ran past ``--timeout``
  survive, which a JUnit report (written only at the end) does not; and a cell that fails after
  an earlier cell timed out, which JUnit lists as a bare "xfail", keeps its message here.
* records the kernel's process id, so the grader can end the kernel too (jupyter_client starts
  it in a session of its own, out of reach of a signal to pytest's process group).
* fails a cell at once when the kernel dies under it (a crash in native code, ``os._exit``):
  nbval alone waits out the whole cell timeout for a reply that will never come.
"""

from __future__ import annotations

import json
import os
import time
from queue import Empty

import pytest

LOG_ENV = "LABKIT_GRADE_LOG"
MAX_TEXT = 20_000  # characters of printed output kept per cell


class KernelDied(RuntimeError):
    """The kernel process exited while a cell was running."""


def _log(record: dict) -> None:
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _watch_for_kernel_death() -> None:
    from nbval.kernel import RunningKernel

    wait_for_reply = RunningKernel.await_reply
    if getattr(wait_for_reply, "labkit_watch", False):
        return

    def await_reply(self, msg_id, timeout=None):
        # Wait in slices of a second and look at the kernel process between them.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if step <= 0:
                raise Empty
            try:
                return wait_for_reply(self, msg_id, timeout=step)
            except Empty:
                if not self.is_alive():
                    raise KernelDied("the kernel died while running this cell (a crash in native code, "
                                     "e.g. an out-of-bounds access, or the process exited)") from None

    await_reply.labkit_watch = True
    RunningKernel.await_reply = await_reply


def pytest_configure(config):
    _watch_for_kernel_death()


def _kernel_pid(item) -> int | None:
    try:
        return int(item.parent.kernel.km.provisioner.process.pid)
    except Exception:  # noqa: BLE001 - no kernel (it failed to start) or another provisioner
        return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if not hasattr(item, "cell_num"):
        return
    if call.when == "setup" and report.passed:
        if not getattr(item.parent, "labkit_pid_logged", False):
            item.parent.labkit_pid_logged = True
            _log({"kernel_pid": _kernel_pid(item)})
        return
    if call.when == "teardown" and report.passed:
        return
    record = {
        "cell": item.cell_num,
        "when": call.when,
        "outcome": report.outcome,  # passed / failed / skipped (a failure marked xfail by nbval)
        "xfail": hasattr(report, "wasxfail"),
        "start": call.start,
        "stop": call.stop,
        "timed_out": bool(getattr(item.parent, "timed_out", False)),  # this or an earlier cell
    }
    if call.excinfo is not None:
        record["error"] = type(call.excinfo.value).__name__
        record["message"] = str(call.excinfo.value)
    outputs = getattr(item, "test_outputs", None) or []
    record["stdout"] = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")[:MAX_TEXT]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    if errors:
        record["ename"], record["evalue"] = errors[-1].get("ename", ""), str(errors[-1].get("evalue", ""))[:MAX_TEXT]
    _log(record)
