"""The pieces of ``labkit grade`` that make it trustworthy, most without running notebooks (fast).

Checks that speak on a GPU as in sim mode (an output left NaN is "not started", never an error
inside the check), ``reject_labkit``, the reuse and suspicious-code scans, the run
environment, the pristine copies' tamper check, and clipped output. Then answers and notebooks
that attack the grading itself (answers that lie to the comparisons, hide a call to labkit, shadow
builtins, swallow the check's error, leave processes running): each fails, or is flagged, and one
small batch is graded end to end (about a minute) for what only a run shows.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from labkit import runtime
from labkit.checks import core, nb02
from labkit.checks._guard import reject_labkit
from labkit.checks.core import CheckFailure, assert_close, assert_equal, poisoned, run_check
from labkit.course import reuse
from labkit.course.isolation import Slots, Snapshot, run_env
from labkit.course.nbval_hooks import clip

# ---------------------------------------------------------------- outputs left NaN (a GPU's unstarted kernel)


def test_an_all_nan_output_is_not_started_never_an_error_in_the_check():
    expected = torch.randn(2, 3, 4)
    with pytest.raises(core.NotStarted, match="left 100% of the output unwritten"):
        assert_close(poisoned(expected.shape, torch.float32), expected, rtol=1e-5)


def test_partly_nan_or_inf_outputs_say_how_much():
    expected = torch.randn(4, 8)
    yours = expected.clone()
    yours[1:3] = float("nan")
    with pytest.raises(AssertionError,
                       match=r"16 of 32 elements are NaN or inf .*left 50% of the output unwritten \(NaN: 16 of 32"):
        assert_close(yours, expected, rtol=1e-5)
    yours = expected.clone()
    yours[0, 0] = float("inf")
    with pytest.raises(AssertionError, match=r"is inf \(1 of 32 elements"):
        assert_close(yours, expected, rtol=1e-5)
    with pytest.raises(AssertionError, match="unwritten"):
        assert_equal(torch.full((3,), float("nan")).double().where(torch.tensor([True, False, False]),
                                                                   torch.ones(3, dtype=torch.float64)),
                     torch.ones(3, dtype=torch.float64))


def test_a_kernel_that_does_nothing_is_reported_not_started_once(capsys):
    """What a stub Numba kernel does on a GPU (its ``raise`` is ignored): returns its NaN-poisoned output."""
    def does_nothing(q, k, v, *, scale=None):
        return poisoned(q.shape, q.dtype, device=q.device)

    with pytest.raises(CheckFailure) as info:
        nb02.check_fused_kernel(does_nothing, block=4 if runtime.is_sim() else 64)
    message = str(info.value)
    assert message.startswith("02.fused_kernel: not started: your kernel left 100% of the output")
    assert message.count("not started") == 1
    assert "raised" not in message and "All-NaN" not in message
    printed = capsys.readouterr().out
    assert printed.count("✗") == 10 and "✓" not in printed  # the same lines as a stub in sim mode


def test_not_started_after_a_passing_property_is_an_ordinary_failure():
    expected = torch.randn(3)
    with pytest.raises(CheckFailure, match=r"1 of 2 properties failed[\s\S]*\[T = 1\]\nyour kernel left 100%"):
        run_check("02.x", [("first", lambda: None),
                           ("T = 1", lambda: assert_close(torch.full((3,), float("nan")), expected, rtol=1e-5))])


def test_a_stub_is_not_started_once_not_per_property():
    def stub():
        raise NotImplementedError("Exercise 02.x: your code here")

    with pytest.raises(CheckFailure) as info:
        run_check("02.x", [("a", stub), ("b", stub), ("c", stub)])
    assert str(info.value).count("not started") == 1
    assert "(3 of 3 properties failed: none can pass until it is written: a, b, c)" in str(info.value)


# ---------------------------------------------------------------- answers that are labkit's own code


def test_reject_labkit_answer():
    from labkit.attention.online_softmax import online_update
    from labkit.attention.reference import reference_decode

    for answer in (reference_decode, functools.partial(reference_decode, scale=0.5), online_update):
        with pytest.raises(CheckFailure, match="your answer is labkit's own implementation \\(labkit.attention"):
            reject_labkit(answer, "01.naive_decode")

    def mine(q, k, v, scale=None):
        return reference_decode(q, k, v, scale=scale)  # delegation: the grader's scan catches it, not this

    reject_labkit(mine, "01.naive_decode")
    reject_labkit(run_check, "01.naive_decode")  # the checks' own helpers are not answers


SOLVED_BY_REFERENCE = """from labkit.attention import reference_decode as ref
def naive_decode(q, k, v, scale=None):
    return ref(q, k, v, scale=scale).to(q.dtype)"""


def _reuse(source, exercise="01.naive_decode", module="nb01", aliases=None):
    import importlib

    entries = importlib.import_module(f"labkit.checks.{module}").SOLUTIONS[exercise]
    return reuse.find_reuse(source, 7, reuse.solution_objects(entries), aliases or {})


def _master_exercises() -> set[str]:
    import nbformat

    from labkit.course.release import cell_meta, master_paths
    from labkit.paths import ROOT

    return {cell_meta(c)["exercise"] for p in master_paths(ROOT / "solutions")
            for c in nbformat.read(p, as_version=4).cells if cell_meta(c).get("exercise")}


def test_reuse_through_an_import_a_reexport_or_an_alias_is_found():
    hits = _reuse(SOLVED_BY_REFERENCE)  # labkit.attention re-exports labkit.attention.reference's function
    assert [(h.cell, h.line) for h in hits] == [(7, 1), (7, 3)]
    assert "return ref(q, k, v, scale=scale).to(q.dtype)" in hits[1].describe()
    # the name bound by the notebook's own import cell (not the exercise cell)
    aliases = {}
    reuse.collect_aliases(reuse.parse("from labkit.attention import naive, reference_decode"), aliases)
    assert _reuse("def naive_decode(q, k, v, scale=None):\n    return naive.naive_decode(q, k, v)", aliases=aliases)
    assert _reuse("naive_decode = reference_decode", aliases=aliases)
    assert _reuse("from labkit.course.solutions import load_fused_kernel\nfused_decode, TILE = load_fused_kernel()",
                  exercise="02.fused_kernel", module="nb02")
    # 08's kernel written as a call of labkit's tile loop (a jit function inlined into the student's)
    assert _reuse("from labkit.attention.quant_tile import attend_range\n@triton.jit\ndef k(Q):\n"
                  "    m, l, acc = attend_range(Q)", exercise="08.dequant_kernel", module="nb08")
    honest = ("import torch\ndef naive_decode(q, k, v, scale=None):\n"
              "    s = torch.einsum('bhd,bhtd->bht', q, k)\n    return s")
    assert _reuse(honest, aliases=aliases) == []
    every = {ex for m in range(9) for ex in __import__(f"labkit.checks.nb0{m}", fromlist=["x"]).SOLUTIONS}
    assert every == _master_exercises()  # every exercise of every master names its labkit answers


def _suspicious(source, cell, aliases):
    from labkit.course.suspicious import find_suspicious

    return find_suspicious(source, cell, aliases)


def test_suspicious_lines_are_found_with_their_line():
    source = ("import sys\nimport labkit.checks.core as c\nc.run_check = print\n"
              "sys.modules['labkit.checks.nb01'].check_naive_decode = print\nimport numpy as np\nnp.isfinite = id\n"
              "x = 1\nresult = [1, 2]\n")
    found = {f.line: f.why for f in _suspicious(source, 4, {})}
    assert set(found) == {2, 3, 4, 6}
    assert "sys.modules" in found[4]
    assert _suspicious("def f(x):\n    y = x.copy()\n    y.shape\n    return y\n", 2, {}) == []
    assert _suspicious("!rm -rf /\n%timeit f()\n", 1, {})[0].line == 1


# ---------------------------------------------------------------- isolation


def test_a_run_environment_names_no_grader_path(tmp_path):
    base = {**os.environ, "PYTHONPATH": "/grader/checkout", "LABKIT_GRADE_LOG": "/grader/out/log.jsonl",
            "PYTEST_ADDOPTS": "-n 4"}
    env = run_env(base, tmp_path / "pristine", tmp_path / "private")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "pristine")
    assert not any("/grader" in v for v in env.values())
    assert env["HOME"].startswith(str(tmp_path / "private"))
    assert env.get("PYTHONNOUSERSITE") == "1" or "PYTHONUSERBASE" in env  # the grader's packages stay importable


def test_a_changed_pristine_copy_is_found_and_restored(tmp_path):
    package = tmp_path / "pkg"
    (package / "checks").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "checks" / "nb00.py").write_text("def check(fn):\n    raise AssertionError\n")
    with Slots(1, Snapshot(package, None)) as slots:
        root = slots.roots[0]
        target = root / "labkit" / "checks" / "nb00.py"
        assert not os.access(target, os.W_OK) or os.geteuid() == 0  # read-only (root ignores it: the checksums don't)
        assert slots.check(0) == []
        os.chmod(target.parent, 0o755)
        os.chmod(target, 0o644)
        target.write_text("def check(fn):\n    pass\n")
        (root / "labkit" / "sitecustomize.py").write_text("")
        assert slots.check(0) == ["labkit/checks/nb00.py changed", "labkit/sitecustomize.py added"]
        assert "raise AssertionError" in (slots.roots[0] / "labkit" / "checks" / "nb00.py").read_text()
        assert slots.check(0) == []


def test_a_run_graded_again_runs_with_no_other_notebook_running(tmp_path):
    """A run whose copy another run changed is run again alone: it waits for the runs in flight, and no
    new run starts until it is done (else the same neighbour could change it again)."""
    import threading
    import time

    from labkit.course.runner import Watch as _Watch

    (tmp_path / "pkg").mkdir()
    watch = _Watch(Snapshot(tmp_path / "pkg", None))
    events, release = [], threading.Event()

    def neighbour():
        with watch.shared():
            events.append("neighbour starts")
            release.wait(5)
            events.append("neighbour ends")

    def again():
        with watch.alone():
            events.append("again starts")
            time.sleep(0.2)
            events.append("again ends")

    def late():
        with watch.shared():
            events.append("late starts")

    first = threading.Thread(target=neighbour)
    first.start()
    while not events:
        time.sleep(0.01)
    second = threading.Thread(target=again)
    second.start()
    time.sleep(0.2)
    third = threading.Thread(target=late)  # arrives while the second run waits
    third.start()
    time.sleep(0.2)
    assert events == ["neighbour starts"]
    release.set()
    for t in (first, second, third):
        t.join(10)
    assert events == ["neighbour starts", "neighbour ends", "again starts", "again ends", "late starts"]


@pytest.mark.parametrize("first, runs", [("kernel never started", 2), ("a cell ran", 1)])
def test_a_run_whose_kernel_never_started_is_graded_again(tmp_path, monkeypatch, first, runs):
    """nbval fails every cell at setup when the kernel does not start (seen once in CI under load):
    the notebook's code never ran, so it runs once more, alone, instead of scoring every check 0."""
    import threading
    from types import SimpleNamespace

    from nbformat.v4 import new_notebook

    from labkit.course import runner
    from labkit.course.gradebook import kernel_never_ran

    not_started = {c: {"when": "setup", "outcome": "failed", "error": "RuntimeError"} for c in range(3)}
    ran = {0: {"when": "call", "outcome": "passed"}, 1: {"when": "setup", "outcome": "failed"}}
    assert kernel_never_ran(not_started) and not kernel_never_ran(ran) and not kernel_never_ran({})
    calls = []

    def fake_pytest(run, notebook, work, env, cell_timeout, timeout, stop):
        calls.append(notebook.is_file())
        run.records = not_started if len(calls) == 1 and first == "kernel never started" else ran
        return ""

    monkeypatch.setattr(runner, "_run_pytest", fake_pytest)
    slots = SimpleNamespace(roots=[tmp_path], take=lambda: 0, give=lambda slot: None, check=lambda slot: [])
    (tmp_path / "pkg").mkdir()
    run = SimpleNamespace(graded=SimpleNamespace(notebook=new_notebook()), key="s/n", records=None, pids=None,
                          forged=0, killed=False, log="")
    problem = runner.execute(run, slots, runner.Watch(Snapshot(tmp_path / "pkg", None)), dict(os.environ), 10, 60,
                             threading.Event())
    assert problem == "" and calls == [True] * runs and run.records is ran
    assert ("kernel did not start" in run.log) == (runs == 2)


def test_a_change_to_the_graders_checkout_names_every_run_in_flight_since_the_last_clean_look(tmp_path):
    from types import SimpleNamespace

    from labkit.course.runner import Watch as _Watch

    package = tmp_path / "pkg"
    (package / "checks").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    target = package / "checks" / "nb00.py"
    target.write_text("def check(fn):\n    raise AssertionError\n")
    watch = _Watch(Snapshot(package, None))
    a, b, c, d = (SimpleNamespace(key=k, checkout=None) for k in "abcd")
    watch.started(a)
    watch.started(b)
    watch.ended(a)  # nothing changed yet: a is cleared
    watch.started(c)
    target.write_text("def check(fn):\n    pass\n")
    watch.ended(b)  # found now: b and c ran meanwhile, either may have done it
    assert a.checkout is None
    assert b.checkout == c.checkout == (["labkit/checks/nb00.py changed"], 2)
    watch.ended(c)  # the same change is not found twice
    assert c.checkout[1] == 2
    watch.started(d)  # alone (--jobs 1): the one run in flight made the change
    (package / "sitecustomize.py").write_text("")
    watch.ended(d)
    assert d.checkout == (["labkit/sitecustomize.py added"], 1)
    assert watch.changes == ["labkit/checks/nb00.py changed", "labkit/sitecustomize.py added"]
    assert "raise AssertionError" not in target.read_text()  # reported, never reverted


def test_a_kernel_keeps_no_import_route_to_the_graders_checkout():
    """The startup file every graded kernel runs drops meta-path finders that answer for ``labkit``."""
    import subprocess
    import sys

    from labkit.course.isolation import NO_CHECKOUT_FINDER

    finder = ("import importlib.machinery, sys\n"
              "class Elsewhere:\n"
              "    @classmethod\n"
              "    def find_spec(cls, name, path=None, target=None):\n"
              "        if name.partition('.')[0] == 'labkit':\n"
              "            return importlib.machinery.PathFinder.find_spec(name, [CHECKOUT])\n"
              "sys.meta_path.append(Elsewhere)\n")
    probe = ("import importlib.util\n"
             "print(importlib.util.find_spec('labkit') is not None)\n")
    checkout = str(runtime.__file__).rsplit("/labkit/", 1)[0]
    python = [sys.executable, "-I", "-S", "-c"]  # no site-packages, no path entries: only the finder has labkit
    before = subprocess.run([*python, f"CHECKOUT = {checkout!r}\n" + finder + probe], capture_output=True, text=True)
    after = subprocess.run([*python, f"CHECKOUT = {checkout!r}\n" + finder + NO_CHECKOUT_FINDER + probe],
                           capture_output=True, text=True)
    assert (before.stdout, after.stdout) == ("True\n", "False\n"), before.stderr + after.stderr


def test_long_output_keeps_head_and_tail():
    text = "".join(f"line {i}\n" for i in range(10_000))
    clipped = clip(text, 1000)
    assert clipped.startswith("line 0\n") and clipped.endswith("line 9999\n")
    assert f"… {len(text) - 1000} characters cut …" in clipped
    assert clip("short", 1000) == "short"


# ---------------------------------------------------------------- the grader runs nothing a notebook names


def test_importing_labkit_main_runs_no_command():
    """A cell (or the grader's own scan, before it stopped importing) that imports ``labkit.__main__``."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import labkit.__main__; print('imported')"], capture_output=True,
                          text=True, timeout=120, cwd=str(runtime.__file__).rsplit("/labkit/", 1)[0])
    assert (done.returncode, done.stdout) == (0, "imported\n"), done.stderr


def test_the_reuse_scan_imports_nothing_a_notebook_names(tmp_path, monkeypatch):
    """A run can leave a module on the grader's path; the next batch's scan must not import it."""
    import sys
    import types

    marker = tmp_path / "imported"
    (tmp_path / "lk_planted_helper.py").write_text(f"open({str(marker)!r}, 'w').close()\nnaive_decode = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "labkit.__main__", raising=False)
    source = ("from lk_planted_helper import naive_decode\nfrom labkit.__main__ import naive_decode\n"
              "import labkit.__main__ as m\nnaive_decode = m.naive_decode\n")
    assert _reuse(source) == []
    assert reuse.resolve("lk_planted_helper.naive_decode") is reuse._MISSING
    assert not marker.exists() and "lk_planted_helper" not in sys.modules and "labkit.__main__" not in sys.modules

    class Booby:
        def __getattr__(self, name):
            raise SystemExit(3)

    fake = types.ModuleType("labkit.zz_booby")
    fake.thing = Booby()
    monkeypatch.setitem(sys.modules, "labkit.zz_booby", fake)
    assert reuse.resolve("labkit.zz_booby.thing.x") is reuse._MISSING  # whatever a lookup raises names nothing
    assert _reuse(SOLVED_BY_REFERENCE)  # and what the grader has imported is still found


def test_a_change_to_the_masters_is_found_and_they_are_never_copied_into_a_slot(tmp_path):
    package, masters = tmp_path / "pkg", tmp_path / "masters"
    package.mkdir()
    masters.mkdir()
    (package / "__init__.py").write_text("")
    (masters / "01_x.ipynb").write_text('{"cells": []}')
    snapshot = Snapshot(package, None, masters=masters)
    with Slots(1, snapshot) as slots:
        assert sorted(p.name for p in slots.roots[0].iterdir()) == ["labkit"]  # the answers stay out of reach
        (masters / "01_x.ipynb").write_text('{"cells": [], "edited": 1}')
        assert snapshot.source_state() != snapshot.source_digest
        from labkit.course.isolation import differences

        assert differences(snapshot.source_state(), snapshot.source_digest) == ["solutions/01_x.ipynb changed"]


# ---------------------------------------------------------------- a notebook that rebinds builtins


def test_the_check_wrapper_calls_the_real_builtins_whatever_the_notebook_bound():
    from labkit.course.graded import PRISTINE, fresh_check_source
    from labkit.course.isolation import PACKAGE

    code = fresh_check_source("raise RuntimeError('the check ran')", "01.x").replace(PRISTINE, str(PACKAGE.parent))
    noop = lambda *a, **k: None  # noqa: E731
    namespace = {name: noop for name in ("exec", "compile", "dict", "getattr", "setattr", "globals")}
    with pytest.raises(RuntimeError, match="the check ran"):
        exec(code, namespace)
    assert __import__("sys").modules["labkit.checks.core"] is core  # the fresh module was only borrowed


@pytest.mark.parametrize("source, why", [
    ("def exec(*args, **kwargs):\n    return None\n", "rebinds the builtin exec"),
    ("print.__self__.exec = lambda *a, **k: None\n", "builtin"),
    ("b = print.__self__\nb.compile = 1\n", "builtin's module"),
    ("import IPython\nIPython.get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)\n", "hides errors"),
    ("import sys\ndef pass_bytes(B):\n    sys.setprofile(None)\n    return B\n", "turns off the checks' watch"),
    ("import sys as s\ns.settrace(None)\n", "turns off the checks' watch"),
    ("from sys import setprofile\n", "turns off the checks' watch"),
    ("import threading\nthreading.setprofile(None)\n", "threads"),
    ("import labkit.attention\nf = getattr(labkit.attention, 'reference_' + 'decode')\n",
     "labkit's attributes by name"),
    ("import numpy as _n0\n_la = _n0.linalg\n_la.norm = lambda *a, **k: 0.0\n", "rebinds"),
    ("class T(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, *a, **k):\n        pass\n",
     "intercepts torch's operations"),
])
def test_routes_around_the_checks_are_flagged(source, why):
    found = _suspicious(source, 3, {})
    assert found and why in " ".join(f.why for f in found), [f.describe() for f in found]


def test_honest_code_with_attributes_and_lookups_is_not_flagged():
    source = ("import torch\nimport numpy as np\nclass Pool:\n    def __init__(self, n):\n        self.max = n\n"
              "        self.free = list(range(n))\n    def size(self):\n        return getattr(self, 'max')\n"
              "x = torch.zeros(3)\ny = x.T\nlayout = np.float32\n")
    assert _suspicious(source, 2, {}) == []


# ---------------------------------------------------------------- answers that lie to the comparisons


class _Fake:
    """What a lying tensor's ``detach`` hands back: no data, zero difference from anything."""

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.dtype = type("dt", (), {"is_floating_point": True, "kind": "O"})()

    def detach(self):
        return self

    double = cpu = numpy = detach

    def astype(self, *a, **k):
        return self

    def __sub__(self, other):
        import numpy

        return numpy.zeros(numpy.shape(other))


class _FakeDetach(torch.Tensor):
    def detach(self):
        return _Fake(self.shape)


class _Agreeable:
    def __ne__(self, other):
        return False

    def __eq__(self, other):
        return True

    def __add__(self, other):
        return self

    __radd__ = __sub__ = __rsub__ = __add__
    __hash__ = object.__hash__


class _LyingInt(int):
    def __ne__(self, other):
        return False

    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


def test_answers_that_lie_to_the_comparisons_fail():
    import numpy as np

    expected = torch.randn(2, 3)
    with pytest.raises(AssertionError, match="relative error|differs"):
        assert_close(torch.zeros(2, 3).as_subclass(_FakeDetach), expected, rtol=1e-5)

    class Echo(torch.Tensor):  # every torch operation on it answers with the expected values
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return expected.clone()

    with pytest.raises(AssertionError, match="relative error"):
        assert_close(torch.zeros(2, 3).as_subclass(Echo), expected, rtol=1e-5)
    with pytest.raises(AssertionError, match="pass bytes: yours is a _Agreeable, not numbers"):
        assert_equal(_Agreeable(), 1024, what="pass bytes")
    with pytest.raises(AssertionError, match="yours is an array of object elements"):
        assert_equal(np.array([_Agreeable()] * 3, dtype=object), np.arange(3))
    with pytest.raises(AssertionError, match="_LyingInt"):
        assert_equal(_LyingInt(3), 5)
    with pytest.raises(AssertionError, match="yours is a _Agreeable"):
        assert_equal([[1, 2], _Agreeable()], [[1, 2], 3])  # nested: every element is looked at


def test_honest_answers_of_every_kind_still_compare():
    import numpy as np

    assert_equal([np.int64(1), torch.tensor(2), 3], [1, 2, 3])
    assert_equal((True, np.bool_(False)), torch.tensor([True, False]))
    assert_equal(torch.tensor([[1, 2]], dtype=torch.int32), np.array([[1, 2]]))
    assert_close(torch.ones(4, dtype=torch.bfloat16), torch.ones(4, dtype=torch.float64), rtol=0.0)
    assert_close(torch.nn.Parameter(torch.ones(3)), torch.ones(3), rtol=0.0)
    assert_close(torch.ones(2, requires_grad=True) * 2, np.full(2, 2.0), rtol=0.0)
    assert_equal(7, 7.0)
    with pytest.raises(AssertionError, match="value differs"):
        assert_equal(torch.tensor([1, 2]), [1, 3])


def test_a_check_fails_answers_that_lie_to_it():
    from labkit.checks import nb01

    def naive_decode(q, k, v, scale=None):
        return torch.zeros_like(q).as_subclass(_FakeDetach)

    def pass_bytes(B, Hq, Hkv, T, D, itemsize):
        return {"scores": _Agreeable(), "softmax": _Agreeable(), "output": _Agreeable()}

    with pytest.raises(CheckFailure, match=r"(\d+) of 8 properties failed"):
        nb01.check_naive_decode(naive_decode)
    with pytest.raises(CheckFailure, match="not numbers"):
        nb01.check_pass_bytes(pass_bytes)


# ---------------------------------------------------------------- an answer that hides its call to labkit


def test_an_answer_that_hides_its_call_to_labkit_fails():
    import sys
    import threading

    from labkit.attention.reference import reference_decode
    from labkit.checks._guard import run_guarded
    from labkit.checks.nb01 import SOLUTIONS

    specs = SOLUTIONS["01.naive_decode"]
    q, k, v = torch.randn(1, 2, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)

    def in_a_thread(q, k, v):
        box = []
        t = threading.Thread(target=lambda: box.append(reference_decode(q, k, v)))
        t.start()
        t.join()
        return box[0]

    def unwatched(q, k, v):
        sys.setprofile(None)
        return reference_decode(q, k, v)

    def unwatched_then_restored(q, k, v):
        hook = sys.getprofile()
        sys.setprofile(None)
        out = reference_decode(q, k, v)
        sys.setprofile(hook)
        return out

    def unwatched_in_a_thread(q, k, v):
        box = []

        def work():
            sys.setprofile(None)
            box.append(reference_decode(q, k, v))

        t = threading.Thread(target=work)
        t.start()
        t.join()
        return box[0]

    before = sys.getprofile(), threading.getprofile()
    for answer, why in ((in_a_thread, "calls labkit's"), (unwatched, "turned off"),
                        (unwatched_then_restored, "turned off"), (unwatched_in_a_thread, "turned off")):
        with pytest.raises(AssertionError, match=why):
            run_guarded(answer, specs, q, k, v)
        assert (sys.getprofile(), threading.getprofile()) == before, answer.__name__

    def mine(q, k, v):
        return torch.einsum("bhd,bhtd->bht", q, k).softmax(-1).unsqueeze(-2).matmul(v).squeeze(-2)

    assert run_guarded(mine, specs, q, k, v).shape == q.shape
    assert (sys.getprofile(), threading.getprofile()) == before


# ---------------------------------------------------------------- a check that raised nothing, but did not pass


def test_a_check_cell_passes_only_with_its_pass_line():
    from nbformat.v4 import new_code_cell, new_notebook

    from labkit.course.gradebook import NotebookResult, score

    prepared = new_notebook(cells=[new_code_cell("check()", metadata={"labkit": {"check": "01.x", "points": 2}})])

    def status(stdout):
        result = NotebookResult("s", "01_x", "s.ipynb")
        rec = {"cell": 0, "when": "call", "outcome": "passed", "start": 0.0, "stop": 1.0, "stdout": stdout}
        score(result, prepared, [], {0: rec}, killed=False, cell_timeout=10, timeout=10)
        return result.checks[0].status, result.checks[0].points

    assert status("Checking 01.x\n  ✓ a\n  ✓ b\n01.x: all 2 properties pass\n") == ("passed", 2)
    assert status("Checking 01.x\n  ✗ a\n  ✓ b\n") == ("failed", 0)  # its CheckFailure was swallowed
    assert status("") == ("failed", 0)
    assert status("Checking 01.x\n  ✗ a\n01.x: all 2 properties pass\n") == ("failed", 0)  # a pass line by hand
    assert status("Checking 01.y\n01.y: all 2 properties pass\n") == ("failed", 0)  # another check's


# ---------------------------------------------------------------- processes a run leaves behind


_SPAWN = """import os, subprocess, sys, time
kids = [subprocess.Popen(["sleep", "300"]), subprocess.Popen(["sleep", "300"], process_group=0)]
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="Linux")
def test_ending_a_run_ends_what_its_processes_started(tmp_path, alive):
    """pytest and the kernel each lead a session; what they start (even in a new process group) ends with them."""
    import signal
    import subprocess
    import sys

    from labkit.course.runner import kill

    def leader():
        proc = subprocess.Popen([sys.executable, "-c", _SPAWN], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        return proc, [int(p) for p in proc.stdout.readline().split()]

    pytest_proc, started = leader()
    kernel, from_kernel = leader()
    everything = [kernel.pid, *started, *from_kernel]
    try:
        assert all(map(alive, everything))
        kill(pytest_proc, [kernel.pid])
        kernel.wait(timeout=10)
        deadline = __import__("time").monotonic() + 10
        while any(map(alive, everything)) and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.1)
        assert not any(map(alive, everything)), [p for p in everything if alive(p)]
    finally:
        for pid in everything:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------- one small batch, graded end to end

ADD_CHECK = """# NBVAL_CHECK_OUTPUT
import numpy as np
from labkit.checks.core import assert_close, fresh_seed, run_check
_x = np.random.default_rng(fresh_seed()).standard_normal(5)
run_check("01.add", [("adds", lambda: assert_close(add(_x, 1.5), _x + 1.5, rtol=1e-12))])"""
ADD = "def add(x, y):\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION"
WRONG = "def add(x, y):\n    return x"
HOSTILE = {  # student -> (exercise cell, an extra cell after the imports)
    "shadows_exec": (WRONG, "def exec(*args, **kwargs):\n    return None"),
    "swallows_errors": (WRONG, "get_ipython().set_custom_exc((BaseException,), lambda *a, **k: None)"),
    "patches_builtins": (WRONG, "print.__self__.exec = lambda *a, **k: None"),
    "imports_main": ("try:\n    from labkit.__main__ import add\nexcept Exception:\n    pass\n" + WRONG, ""),
    "leaves_processes": (ADD, "import subprocess\nkids = [subprocess.Popen(['sleep', '300']),\n"
                              "        subprocess.Popen(['sleep', '300'], process_group=0)]\n"
                              "open(PIDS, 'w').write(' '.join(str(k.pid) for k in kids))"),
}


def test_a_batch_of_hostile_notebooks_grades_honestly_and_leaves_nothing_behind(tmp_path, monkeypatch, alive):
    """Through the Python API (an aborted batch raises here); every run's processes and folders end with it."""
    import tempfile

    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from labkit.course.grade import grade
    from labkit.course.release import student_notebook

    master = new_notebook(cells=[new_markdown_cell("# Tiny"), new_code_cell("import numpy as np"),
                                 new_code_cell(ADD, metadata={"labkit": {"exercise": "01.add"}}),
                                 new_code_cell(ADD_CHECK, metadata={"labkit": {"check": "01.add", "points": 1}})])
    (tmp_path / "masters").mkdir()
    nbformat.write(master, tmp_path / "masters" / "01_tiny.ipynb")
    pids = tmp_path / "pids"
    for student, (exercise, extra) in {"honest": (ADD, ""), **HOSTILE}.items():
        nb = student_notebook(master, "01_tiny")
        nb.cells[2].source = exercise
        if extra:
            nb.cells.insert(2, new_code_cell(extra.replace("PIDS", repr(str(pids)))))
        (tmp_path / "subs" / student).mkdir(parents=True)
        nbformat.write(nb, tmp_path / "subs" / student / "01_tiny.ipynb")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    try:
        results = {r.student: r for r in grade([tmp_path / "subs"], tmp_path / "out", masters=tmp_path / "masters",
                                               jobs=3, cell_timeout=60, timeout=240, progress=False)}
        status = {s: r.checks[0].status for s, r in results.items()}
        assert status == {"honest": "passed", "shadows_exec": "failed", "swallows_errors": "failed",
                          "patches_builtins": "failed", "imports_main": "failed", "leaves_processes": "suspicious"}
        assert "hid how the check ended" in results["swallows_errors"].checks[0].message
        started = [int(p) for p in pids.read_text().split()]
        assert len(started) == 2 and not any(map(alive, started))
        assert sorted(os.listdir(tmp)) == []  # no private folder, copy of labkit or guard folder is left
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
