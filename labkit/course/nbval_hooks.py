"""A pytest plugin that ``labkit grade`` loads into every nbval run (``-p labkit.course.nbval_hooks``).

nbval runs each code cell of a notebook as one pytest item, in this (pytest's) process; the
notebook's code runs in a kernel, a child process. This plugin

* reports one JSON record per cell to the grader the moment the cell has run: its outcome,
  start and stop times, the error it raised (``ename``/``evalue``: for a failed check, the
  :class:`~labkit.checks.core.CheckFailure` text) and its printed output. Records go down a
  pipe whose file descriptor the grader passes (``--labkit-report-fd``), never a file and
  never anything named in the kernel's environment; the descriptor is not inherited by the
  kernel, and each record carries an HMAC under a key the grader hands over once, on another
  descriptor (``--labkit-key-fd``), read and closed before any kernel starts. A record a
  kernel forges (e.g. by opening ``/proc/<pytest>/fd/N``) has no valid MAC and marks the
  submission ``tampered``. Records sent before the grader had to kill a notebook that ran past
  ``--timeout`` survive, which a JUnit report (written only at the end) does not.
* records the kernel's process id, so the grader can end the kernel too (jupyter_client starts
  it in a session of its own, out of reach of a signal to pytest's process group).
* fails a cell at once when the kernel dies under it (a crash in native code, ``os._exit``):
  nbval alone waits out the whole cell timeout for a reply that will never come.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from queue import Empty

import pytest

MAX_TEXT = 20_000  # characters of printed output kept per cell


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` whole when short; else its head and tail around a line saying how much was cut."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}\n… {len(text) - 2 * keep} characters cut …\n{text[-keep:]}"


def sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode("utf-8"), hashlib.sha256).hexdigest()


class _Channel:
    fd: int | None = None
    key: bytes = b""
    seq: int = 0


_channel = _Channel()


class KernelDied(RuntimeError):
    """The kernel process exited while a cell was running."""


def _log(record: dict) -> None:
    if _channel.fd is None:
        return
    _channel.seq += 1
    payload = json.dumps({**record, "seq": _channel.seq})
    data = f"{sign(_channel.key, payload)} {payload}\n".encode("utf-8")
    while data:
        data = data[os.write(_channel.fd, data):]


def pytest_addoption(parser):
    parser.addoption("--labkit-report-fd", type=int, default=None, help="(labkit grade) pipe for per-cell records")
    parser.addoption("--labkit-key-fd", type=int, default=None, help="(labkit grade) pipe holding the records' key")


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
    key_fd, report_fd = config.getoption("--labkit-key-fd"), config.getoption("--labkit-report-fd")
    if key_fd is not None:
        chunks = []
        while chunk := os.read(key_fd, 4096):
            chunks.append(chunk)
        os.close(key_fd)
        _channel.key = b"".join(chunks).strip()
    if report_fd is not None:
        os.set_inheritable(report_fd, False)  # a kernel started from here does not get it
        _channel.fd = report_fd


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
    record["stdout"] = clip("".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream"))
    errors = [o for o in outputs if o.get("output_type") == "error"]
    if errors:
        record["ename"], record["evalue"] = errors[-1].get("ename", ""), clip(str(errors[-1].get("evalue", "")))
    if "message" in record:
        record["message"] = clip(record["message"])
    _log(record)
