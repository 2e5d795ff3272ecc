"""The pieces of ``labkit grade`` that make it trustworthy, without running notebooks (fast).

Checks that speak on a GPU as in sim mode (an output left NaN is "not started", never an error
inside the check), ``reject_labkit``, the reuse and suspicious-code scans, the run
environment, the pristine copies' tamper check, and clipped output.
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
    honest = ("import torch\ndef naive_decode(q, k, v, scale=None):\n"
              "    s = torch.einsum('bhd,bhtd->bht', q, k)\n    return s")
    assert _reuse(honest, aliases=aliases) == []
    every = {ex for m in range(9) for ex in __import__(f"labkit.checks.nb0{m}", fromlist=["x"]).SOLUTIONS}
    assert every == _master_exercises()  # every exercise of every master names its labkit answers


def test_suspicious_lines_are_found_with_their_line():
    source = ("import sys\nimport labkit.checks.core as c\nc.run_check = print\n"
              "sys.modules['labkit.checks.nb01'].check_naive_decode = print\nimport numpy as np\nnp.isfinite = id\n"
              "x = 1\nresult = [1, 2]\n")
    found = {f.line: f.why for f in reuse.find_suspicious(source, 4, {})}
    assert set(found) == {2, 3, 4, 6}
    assert "sys.modules" in found[4]
    assert reuse.find_suspicious("def f(x):\n    y = x.copy()\n    y.shape\n    return y\n", 2, {}) == []
    assert reuse.find_suspicious("!rm -rf /\n%timeit f()\n", 1, {})[0].line == 1


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
