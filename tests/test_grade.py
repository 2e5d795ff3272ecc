"""``labkit grade`` on tiny synthetic masters: restoring checks, scoring, timeouts, errors, parallel runs.

The masters are generated here (three and two exercises, checks built on
``labkit.checks.core.run_check`` and ``assert_close`` with fresh random inputs), so a whole batch
of eight notebooks grades in a few seconds per notebook. One batch is graded once (through the
CLI) and shared by the tests that read its gradebook.
"""

from __future__ import annotations

import copy
import csv
import json
import tempfile
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labkit import cli

from labkit.course.isolation import Snapshot, differences
from labkit.course.graded import build_graded
from labkit.course.prepare import GradeError, Masters, find_submissions, labkit_meta
from labkit.course.release import student_notebook

# ---------------------------------------------------------------- the synthetic masters

SOLUTIONS = {  # exercise -> (function source with its solution region, points, expected(x))
    "01.add": ("def add(x, y):\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION", 2,
               "add(_x, 1.5)", "_x + 1.5"),
    "01.scale": ("def scale(x, a):\n    ### BEGIN SOLUTION\n    return a * x\n    ### END SOLUTION", 3,
                 "scale(_x, -2.0)", "-2.0 * _x"),
    "01.norm": ("def norm(x):\n    ### BEGIN SOLUTION\n    return np.sqrt((x * x).sum())\n    ### END SOLUTION", 1,
                "norm(_x)", "np.linalg.norm(_x)"),
    "02.neg": ("def neg(x):\n    ### BEGIN SOLUTION\n    return -x\n    ### END SOLUTION", 1, "neg(_x)", "-_x"),
    "02.square": ("def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION", 2,
                  "square(_x)", "_x ** 2"),
}


def check_source(exercise: str) -> str:
    _, _, yours, expected = SOLUTIONS[exercise]
    return (
        "# NBVAL_CHECK_OUTPUT\n"
        "import numpy as np\n"
        "from labkit.checks.core import assert_close, fresh_seed, run_check\n"
        "_x = np.random.default_rng(fresh_seed()).standard_normal(7)\n"
        f'run_check("{exercise}", [\n'
        f'    ("matches numpy", lambda: assert_close({yours}, {expected}, rtol=1e-12)),\n'
        f'    ("one element", lambda: assert_close({yours.replace("_x", "_x[:1]")}, '
        f'{expected.replace("_x", "_x[:1]")}, rtol=1e-12)),\n'
        "])"
    )


def make_master(number: str, exercises: list[str]) -> nbformat.NotebookNode:
    cells = [new_markdown_cell(f"# Tiny notebook {number}"), new_code_cell("import numpy as np")]
    for ex in exercises:
        source, points = SOLUTIONS[ex][:2]
        cells.append(new_markdown_cell(f"Exercise {ex}"))
        cells.append(new_code_cell(source, metadata={"labkit": {"exercise": ex}}))
        cells.append(new_code_cell(check_source(ex), metadata={"labkit": {"check": ex, "points": points}}))
    cells.append(new_markdown_cell("## Results"))
    return new_notebook(cells=cells)


MASTERS = {"01_tiny": make_master("01", ["01.add", "01.scale", "01.norm"]),
           "02_pair": make_master("02", ["02.neg", "02.square"])}


def solve(nb, exercise: str, body: str | None = None) -> None:
    """Fill in the student's exercise cell: the master's solution, or ``body`` as the function body."""
    for cell in nb.cells:
        if labkit_meta(cell).get("exercise") == exercise:
            head = SOLUTIONS[exercise][0].splitlines()[0]
            cell.source = SOLUTIONS[exercise][0] if body is None else f"{head}\n{body}"
            return
    raise KeyError(exercise)


def index_of(nb, key: str, value: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if labkit_meta(c).get(key) == value)


@pytest.fixture(scope="module")
def masters_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("masters")
    for name, nb in MASTERS.items():
        nbformat.write(nb, d / f"{name}.ipynb")
    return d


def released(name: str) -> nbformat.NotebookNode:
    return student_notebook(MASTERS[name], name)


# ---------------------------------------------------------------- preparing submissions (no kernels)


def checks_in(prepared):
    return [(i, labkit_meta(c)["check"]) for i, c in enumerate(prepared.cells) if "check" in labkit_meta(c)]


def test_the_graded_notebook_is_built_from_the_master():
    nb = released("01_tiny")
    edited = nb.cells[index_of(nb, "check", "01.add")]
    edited.source = 'print("Checking 01.add\\n  ✓ matches numpy")'  # edited to "pass"
    del nb.cells[index_of(nb, "check", "01.scale")]  # deleted
    moved = nb.cells.pop(index_of(nb, "check", "01.norm"))
    nb.cells.insert(1, moved)  # moved above its exercise
    solve(nb, "01.norm")
    nb.cells.insert(0, nb.cells.pop(index_of(nb, "exercise", "01.norm")))  # an exercise moved above the imports
    nb.cells.append(new_code_cell("x = 1", metadata={"labkit": "mangled"}))  # malformed metadata
    nb.cells.append(new_code_cell("print('my scratch cell')"))
    graded = build_graded(nb, MASTERS["01_tiny"], "01_tiny")
    prepared = graded.notebook
    checks = checks_in(prepared)
    assert [c for _, c in checks] == ["01.add", "01.scale", "01.norm"]
    for i, ex in checks:
        assert labkit_meta(prepared.cells[i - 1]).get("exercise") == ex
        assert repr(check_source(ex).replace("# NBVAL_CHECK_OUTPUT\n", "")) in prepared.cells[i].source
        assert "spec_from_file_location" in prepared.cells[i].source  # the check modules are loaded fresh
    code = [c for c in prepared.cells if c.cell_type == "code"]
    assert code[0].source == "import numpy as np"  # the master's imports run first, the moved exercise after them
    assert graded.exercises["01.norm"][0] == 1  # numbered as the student sees it: the first cell of their notebook
    assert prepared.cells[-1].source == "print('my scratch cell')"  # the student's own cells stay, in place
    assert all(c.outputs == [] and c.execution_count is None for c in prepared.cells if c.cell_type == "code")
    assert len({c.id for c in prepared.cells}) == len(prepared.cells)


def test_an_exercise_cell_that_lost_its_metadata_runs_as_an_extra_cell_before_the_check():
    nb = released("02_pair")
    solve(nb, "02.neg")
    nb.cells[index_of(nb, "exercise", "02.neg")].metadata = {}  # metadata lost (copied cell)
    prepared = build_graded(nb, MASTERS["02_pair"], "02_pair").notebook
    at = index_of(prepared, "check", "02.neg")
    assert "return -x" in prepared.cells[at - 1].source


def test_submissions_are_matched_by_folder_name_or_exercise_ids(tmp_path, masters_dir):
    book = Masters.load(masters_dir)
    (tmp_path / "alice").mkdir()
    nbformat.write(released("01_tiny"), tmp_path / "alice" / "01_tiny.ipynb")
    nbformat.write(released("02_pair"), tmp_path / "bob_02_pair.ipynb")
    nbformat.write(released("02_pair"), tmp_path / "gus_02_pair (1).ipynb")  # a browser's re-download
    (tmp_path / "hal").mkdir()
    nbformat.write(released("01_tiny"), tmp_path / "hal" / "01_tiny (2).ipynb")
    carol = released("02_pair")
    carol.cells[0].metadata["labkit"] = ["mangled"]
    nbformat.write(carol, tmp_path / "carol_homework.ipynb")  # renamed: matched by ids
    (tmp_path / "dave_01_tiny.ipynb").write_text("{ not json")
    nbformat.write(new_notebook(cells=[new_code_cell("1")]), tmp_path / "erin.ipynb")
    (tmp_path / "alice" / ".ipynb_checkpoints").mkdir()
    nbformat.write(released("01_tiny"), tmp_path / "alice" / ".ipynb_checkpoints" / "01_tiny-checkpoint.ipynb")
    found = {(s.student, s.master, bool(s.problem)) for s in find_submissions([tmp_path], book)}
    assert found == {("alice", "01_tiny", False), ("bob", "02_pair", False), ("carol_homework", "02_pair", False),
                     ("gus", "02_pair", False), ("hal", "01_tiny", False),
                     ("dave", "01_tiny", True), ("erin", None, True)}
    with pytest.raises(GradeError, match="does not exist"):
        find_submissions([tmp_path / "nobody"], book)
    bad = copy.deepcopy(MASTERS["02_pair"])
    bad.cells[index_of(bad, "check", "02.neg")].metadata["labkit"]["points"] = "two"
    (tmp_path / "bad").mkdir()
    nbformat.write(bad, tmp_path / "bad" / "02_pair.ipynb")
    with pytest.raises(GradeError, match="check '02.neg' has points='two'"):
        Masters.load(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GradeError, match="no master"):
        Masters.load(tmp_path / "empty")


# ---------------------------------------------------------------- one graded batch (8 notebooks, 2 jobs)

CELL_TIMEOUT = 20  # a kernel's first check imports torch: seconds on a loaded machine


PATCH_RUN_CHECK = """import labkit.checks.core as core
def fake(exercise, props):
    print("Checking", exercise)
    print(exercise + ": all pass")
core.run_check = fake"""

FORGE = """import json, os
parent = f"/proc/{os.getppid()}/fd"
for fd in os.listdir(parent):
    try:
        if os.readlink(f"{parent}/{fd}").startswith("pipe:"):
            with open(f"{parent}/{fd}", "w") as fh:
                for cell in range(30):
                    rec = {"cell": cell, "when": "call", "outcome": "passed", "start": 0, "stop": 1, "seq": cell + 1}
                    fh.write("0" * 64 + " " + json.dumps(rec) + chr(10))
    except OSError:
        pass
print(sorted(k for k in os.environ if "GRADE" in k or "LOG" in k))"""

REWRITE_CORE = """import os
import labkit.checks.core as core
for path in (core.__file__, core.__cached__):
    os.chmod(os.path.dirname(path), 0o755)
    os.chmod(path, 0o644)
    os.remove(path)
with open(core.__file__, "w") as fh:
    fh.write("def run_check(exercise, props):\\n    print(exercise, 'all pass')\\n"
             "def assert_close(*a, **k):\\n    pass\\n"
             "def fresh_seed():\\n    return 0\\n")"""

# Deletes the checks from its own pristine copy, then imports them: an editable install's finder would
# supply them from the grader's checkout (which the notebook could then rewrite) if the kernel kept it.
DELETE_OWN_CHECKS = """import os, shutil, labkit
package = os.path.dirname(labkit.__file__)
for dirpath, _, _ in os.walk(package):
    os.chmod(dirpath, 0o755)
shutil.rmtree(os.path.join(package, "checks"))
try:
    import labkit.checks.core as core
except ImportError:
    pass
else:
    raise RuntimeError("IMPORTED FROM " + core.__file__)"""

DELETE_OTHERS = """import os, shutil, tempfile
OUT = {out!r}
for name in os.listdir(tempfile.gettempdir()):
    path = os.path.join(tempfile.gettempdir(), name)
    if name.startswith("lk-") and not os.getcwd().startswith(path):
        for dirpath, _, _ in os.walk(path):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(path, ignore_errors=True)
for name in ("prepared", "logs", "junit", "feedback"):
    shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
with open(os.path.join(OUT, "gradebook.csv"), "w") as fh:
    fh.write("student,notebook,exercise,points,possible,status,submission\\n")"""


def hostile(cell: str, *, solved=()) -> nbformat.NotebookNode:
    """The released 01_tiny with ``cell`` added right after the imports (and ``solved`` exercises solved)."""
    nb = released("01_tiny")
    for ex in solved:
        solve(nb, ex)
    nb.cells.insert(2, new_code_cell(cell))
    return nb


@pytest.fixture(scope="module")
def batch(tmp_path_factory, masters_dir):
    subs, out = tmp_path_factory.mktemp("subs"), tmp_path_factory.mktemp("out")
    tmp = tmp_path_factory.mktemp("tmp")  # the runs' private folders and pristine copies; a hostile cell sweeps it
    files = {}
    files["grace/01_tiny"] = hostile(PATCH_RUN_CHECK)  # patches run_check; solves nothing
    files["ivy/01_tiny"] = hostile(FORGE, solved=["01.add"])  # forges "passed" records down the parent's pipes
    files["judy/01_tiny"] = hostile(REWRITE_CORE)  # rewrites the installed check module
    files["kim/01_tiny"] = released("01_tiny")  # a blank notebook graded in the same batch
    files["leo/01_tiny"] = hostile(DELETE_OTHERS.format(out=str(out)), solved=["01.add"])  # deletes others' files
    files["alice/01_tiny"] = MASTERS["01_tiny"]  # full solutions
    files["alice/02_pair"] = MASTERS["02_pair"]
    files["bob_01_tiny"] = released("01_tiny")  # nothing started
    files["bob_02_pair"] = released("02_pair")
    carol = files["carol/01_tiny"] = released("01_tiny")  # one exercise solved
    solve(carol, "01.scale")
    dave = files["dave/01_tiny"] = released("01_tiny")  # check cell edited to pass, exercise unsolved
    dave.cells[index_of(dave, "check", "01.add")].source = 'print("Checking 01.add")\nprint("  ✓ matches numpy")'
    solve(dave, "01.norm")
    del dave.cells[index_of(dave, "check", "01.norm")]  # ... a check deleted
    dave.cells.insert(2, dave.cells.pop(index_of(dave, "exercise", "01.norm")))  # ... an exercise moved up
    frank = files["frank/01_tiny"] = released("01_tiny")  # an infinite loop in one exercise
    solve(frank, "01.add")
    solve(frank, "01.scale", "    while True:\n        pass")
    solve(frank, "01.norm")
    erin = copy.deepcopy(MASTERS["01_tiny"])  # an nbformat 4.4 file without cell ids, renamed
    erin.nbformat_minor = 4
    for cell in erin.cells:
        cell.pop("id", None)
    files["erin/Copy of 01_tiny"] = erin
    for name, nb in files.items():
        (subs / name).parent.mkdir(parents=True, exist_ok=True)
        (subs / f"{name}.ipynb").write_text(nbformat.writes(nb, version=4))
    (subs / "mallory_01_tiny.ipynb").write_text('{"cells": [ oops')  # malformed
    (subs / "zed").mkdir()
    nbformat.write(new_notebook(cells=[new_code_cell("print(1)")]), subs / "zed" / "homework.ipynb")
    start = time.monotonic()
    checkout = Snapshot(data=None).source_digest
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp))
        mp.setenv("TMPDIR", str(tmp))
        status = cli.main(["grade", str(subs), "--out", str(out), "--masters", str(masters_dir), "--jobs", "2",
                           "--cell-timeout", str(CELL_TIMEOUT), "--timeout", "120"])
    with open(out / "gradebook.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"status": status, "out": out, "rows": rows, "seconds": time.monotonic() - start,
            "results": json.loads((out / "results.json").read_text()),
            "checkout": differences(Snapshot(data=None).source_state(), checkout)}


def grades(batch, student, notebook):
    return {r["exercise"]: (float(r["points"]), float(r["possible"]), r["status"])
            for r in batch["rows"] if r["student"] == student and r["notebook"] == notebook}


def test_masters_score_full_points(batch):
    assert grades(batch, "alice", "01_tiny") == {"01.add": (2, 2, "passed"), "01.scale": (3, 3, "passed"),
                                                 "01.norm": (1, 1, "passed")}
    assert grades(batch, "alice", "02_pair") == {"02.neg": (1, 1, "passed"), "02.square": (2, 2, "passed")}
    assert grades(batch, "erin", "01_tiny") == grades(batch, "alice", "01_tiny")


def test_released_notebooks_score_zero_and_every_exercise_fails(batch):
    for nb, exercises in (("01_tiny", ["01.add", "01.scale", "01.norm"]), ("02_pair", ["02.neg", "02.square"])):
        got = grades(batch, "bob", nb)
        assert sorted(got) == sorted(exercises)
        assert all(points == 0 and status == "failed" for points, _, status in got.values())
    feedback = (batch["out"] / "feedback" / "bob" / "01_tiny.md").read_text()
    assert "Score: 0 of 6 points" in feedback
    assert "not started: Exercise 01.add: your code here" in feedback


def test_one_solved_exercise_scores_exactly_that_exercise(batch):
    assert grades(batch, "carol", "01_tiny") == {"01.add": (0, 2, "failed"), "01.scale": (3, 3, "passed"),
                                                 "01.norm": (0, 1, "failed")}


def test_an_edited_or_deleted_check_is_graded_by_the_original(batch):
    assert grades(batch, "dave", "01_tiny") == {"01.add": (0, 2, "failed"), "01.scale": (0, 3, "failed"),
                                                "01.norm": (1, 1, "passed")}
    feedback = (batch["out"] / "feedback" / "dave" / "01_tiny.md").read_text()
    # the original check ran: its CheckFailure text (not the student's print) is in the feedback
    assert "01.add: not started: Exercise 01.add: your code here" in feedback


def test_an_infinite_loop_times_out_on_its_cell_and_later_cells_still_run(batch):
    assert grades(batch, "frank", "01_tiny") == {"01.add": (2, 2, "passed"), "01.scale": (0, 3, "timeout"),
                                                 "01.norm": (1, 1, "passed")}
    feedback = (batch["out"] / "feedback" / "frank" / "01_tiny.md").read_text()
    assert f"ran past the cell time limit of {CELL_TIMEOUT} s" in feedback


def test_malformed_and_unmatched_files_are_error_rows(batch):
    assert batch["status"] == 1  # graded, with error rows
    assert grades(batch, "mallory", "01_tiny") == {"01.add": (0, 2, "error"), "01.scale": (0, 3, "error"),
                                                   "01.norm": (0, 1, "error")}
    assert grades(batch, "zed", "homework") == {"": (0, 0, "error")}
    assert "not a valid notebook" in (batch["out"] / "feedback" / "mallory" / "01_tiny.md").read_text()


def test_failed_checks_show_the_checkfailure_text(batch):
    feedback = (batch["out"] / "feedback" / "carol" / "01_tiny.md").read_text()
    assert "## 01.add: failed" in feedback and "## 01.scale" not in feedback
    assert "CheckFailure: 01.add: not started: Exercise 01.add: your code here" in feedback
    assert "(2 of 2 properties failed: none can pass until it is written: matches numpy, one element)" in feedback
    assert "✗ one element" in feedback


def most_at_once(spans) -> int:
    """The largest number of the intervals ``spans`` that overlap at one moment."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])  # an end sorts before a start
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_hostile_submissions_score_zero_or_are_flagged(batch):
    zero = {"01.add": (0, 2), "01.scale": (0, 3), "01.norm": (0, 1)}
    for student in ("grace", "ivy", "judy", "leo"):
        got = grades(batch, student, "01_tiny")
        assert {ex: (p, q) for ex, (p, q, _) in got.items()} == zero, student
    assert {s for _, _, s in grades(batch, "grace", "01_tiny").values()} == {"failed"}  # the fresh checks ran
    assert {s for _, _, s in grades(batch, "ivy", "01_tiny").values()} == {"tampered"}  # forged lines seen
    assert {s for _, _, s in grades(batch, "judy", "01_tiny").values()} == {"tampered"}  # the copy changed
    assert grades(batch, "leo", "01_tiny")["01.add"][2] in ("suspicious", "tampered")
    results = {r["student"]: r for r in batch["results"]}
    assert any("labkit.checks" in f or "rebinds" in f for f in results["grace"]["flags"])
    assert "forged" in results["ivy"]["tampered"]
    assert "pristine copy of labkit changed" in results["judy"]["tampered"]
    # and the grader's own checkout was never reached, by them or anyone
    assert batch["checkout"] == []
    assert not any("checkout changed" in f or "grader's own" in f for r in batch["results"] for f in r["flags"])
    feedback = (batch["out"] / "feedback" / "grace" / "01_tiny.md").read_text()
    assert "cell 3, line 1: `import labkit.checks.core as core`" in feedback  # the student's own cell numbers


def test_no_other_submission_is_changed_by_the_hostile_ones(batch):
    # the blank notebook graded in the same batch as the module rewrite scores 0, "not started" once per exercise
    assert grades(batch, "kim", "01_tiny") == grades(batch, "bob", "01_tiny")
    feedback = (batch["out"] / "feedback" / "kim" / "01_tiny.md").read_text()
    assert feedback.count("not started: Exercise 01.add: your code here") == 1
    # every honest notebook keeps its grade (the other tests), and every file of theirs is there
    for student, nb in (("alice", "01_tiny"), ("alice", "02_pair"), ("carol", "01_tiny"), ("kim", "01_tiny")):
        assert (batch["out"] / "feedback" / student / f"{nb}.md").exists()
        assert (batch["out"] / "prepared" / student / f"{nb}.ipynb").exists()
    assert len({(r["student"], r["notebook"]) for r in batch["rows"]}) == 15


def test_two_notebooks_run_at_once_with_two_jobs(batch):
    runs = [r for r in batch["results"] if not r["problem"]]
    assert len(runs) == 13
    for r in runs:
        assert r["started"] <= r["cells_started"] <= r["cells_finished"] <= r["finished"]
    # two nbval runs (each with its kernel) were executing at the same moment; never more than --jobs
    assert most_at_once([(r["started"], r["finished"]) for r in runs]) == 2
    assert most_at_once([(r["cells_started"], r["cells_finished"]) for r in runs]) <= 2


def test_outputs_written(batch):
    out = batch["out"]
    assert {p.name for p in (out / "prepared" / "alice").iterdir()} == {"01_tiny.ipynb", "02_pair.ipynb"}
    assert "FAILED" in (out / "logs" / "bob" / "01_tiny.txt").read_text()
    with open(out / "totals.csv", newline="") as fh:
        totals = {(r["student"], r["notebook"]): r for r in csv.DictReader(fh)}
    assert (totals[("alice", "01_tiny")]["points"], totals[("alice", "01_tiny")]["possible"]) == ("6", "6")
    assert totals[("frank", "01_tiny")]["timeout"] == "1"


def test_a_kernel_whose_copy_lost_a_module_cannot_import_it_from_the_graders_checkout(tmp_path, masters_dir):
    """Graded alone, so that nothing else touches its copy; in an editable install the route exists."""
    (tmp_path / "subs" / "nora").mkdir(parents=True)
    nbformat.write(hostile(DELETE_OWN_CHECKS), tmp_path / "subs" / "nora" / "01_tiny.ipynb")
    checkout = Snapshot(data=None).source_digest
    cli.main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--masters", str(masters_dir),
              "--jobs", "1", "--timeout", "120"])
    assert differences(Snapshot(data=None).source_state(), checkout) == []
    log = (tmp_path / "out" / "logs" / "nora" / "01_tiny.txt").read_text()
    assert "the pristine copy changed during this run" in log  # the cell ran: it deleted checks/ from its copy
    assert "IMPORTED FROM /" not in log
    with open(tmp_path / "out" / "gradebook.csv", newline="") as fh:
        assert {r["status"] for r in csv.DictReader(fh)} == {"tampered"}


# ---------------------------------------------------------------- the notebook time limit


def test_a_notebook_past_its_time_limit_or_whose_kernel_dies_keeps_what_it_graded(tmp_path, masters_dir, alive):
    subs = tmp_path / "subs"
    subs.mkdir()
    for student, cell in (("hank", "import time\ntime.sleep(600)"), ("ivan", "import os\nos._exit(1)")):
        nb = copy.deepcopy(MASTERS["01_tiny"])
        nb.cells.insert(index_of(nb, "check", "01.add") + 1, new_code_cell(cell))
        nbformat.write(nb, subs / f"{student}_01_tiny.ipynb")
    out = tmp_path / "out"
    # the cell time limit is far beyond the notebook's: only the notebook's limit, or noticing that the
    # kernel died, can end these runs in time
    status = cli.main(["grade", str(subs), "--out", str(out), "--masters", str(masters_dir),
                       "--jobs", "2", "--cell-timeout", "300", "--timeout", "90"])
    assert status == 0
    with open(out / "gradebook.csv", newline="") as fh:
        rows = {(r["student"], r["exercise"]): (r["points"], r["status"]) for r in csv.DictReader(fh)}
    assert rows == {("hank", "01.add"): ("2", "passed"), ("hank", "01.scale"): ("0", "timeout"),
                    ("hank", "01.norm"): ("0", "timeout"),
                    ("ivan", "01.add"): ("2", "passed"), ("ivan", "01.scale"): ("0", "failed"),
                    ("ivan", "01.norm"): ("0", "failed")}
    assert "the notebook ran past the time limit of 90 s" in (out / "feedback" / "hank" / "01_tiny.md").read_text()
    feedback = (out / "feedback" / "ivan" / "01_tiny.md").read_text()
    assert "KernelDied: the kernel died while running this cell" in feedback
    assert "not run: the kernel had died in an earlier cell" in feedback
    pids = next(r for r in json.loads((out / "results.json").read_text()) if r["student"] == "hank")["kernel_pids"]
    assert pids and not any(map(alive, pids))  # hank's kernel was ended with its run


# ---------------------------------------------------------------- one real course notebook


def _exercise(nb, exercise, source):
    nb.cells[index_of(nb, "exercise", exercise)].source = source


def test_a_real_master_scores_full_points_its_release_zero_and_reuse_or_patches_nothing(tmp_path):
    from labkit.course.grade import grade
    from labkit.paths import ROOT

    master = ROOT / "solutions" / "00_setup.ipynb"
    master_nb = nbformat.read(master, as_version=4)
    for who in ("teacher", "student", "nina", "omar"):
        (tmp_path / who).mkdir()
    (tmp_path / "teacher" / master.name).write_bytes(master.read_bytes())
    nbformat.write(student_notebook(master_nb, master.name), tmp_path / "student" / master.name)
    # nina: both exercises answered by labkit's own implementations (an import, an alias, a delegating body)
    nina = student_notebook(master_nb, master.name)
    _exercise(nina, "00.roofline_time",
              "from labkit.bench.memory_wall import decode_kv_bytes, roofline_time_us as _fast\n"
              "def roofline_time_us(batch, layers, kv_heads, head_dim, context, itemsize, gbps):\n"
              "    return _fast(decode_kv_bytes(batch, layers, kv_heads, head_dim, context, itemsize), gbps)")
    _exercise(nina, "00.fix_timing", "import labkit.bench.simgpu as sg\ntime_kernel_us = sg.reference_time_us")
    nbformat.write(nina, tmp_path / "nina" / "00_setup (1).ipynb")  # a re-download's name
    # omar: patches the notebook's check functions, solves nothing
    omar = student_notebook(master_nb, master.name)
    omar.cells.insert(3, new_code_cell("nb00.check_roofline_time = lambda fn: print('all pass')\n"
                                       "from labkit.checks import nb00 as again\nagain.check_timing = print"))
    nbformat.write(omar, tmp_path / "omar" / master.name)
    results = {r.student: r for r in grade([tmp_path / s for s in ("teacher", "student", "nina", "omar")],
                                           tmp_path / "out", masters=ROOT / "solutions", jobs=2, cell_timeout=300,
                                           timeout=600, progress=False)}
    checks = Masters.load(ROOT / "solutions").checks("00_setup")
    assert checks and results["teacher"].possible == sum(c.points for c in checks)
    assert [c.status for c in results["teacher"].checks] == ["passed"] * len(checks)
    assert results["teacher"].score == results["teacher"].possible and not results["teacher"].flags
    assert [c.status for c in results["student"].checks] == ["failed"] * len(checks)
    assert results["student"].score == 0
    assert all("not started" in c.message for c in results["student"].checks)
    assert [c.status for c in results["nina"].checks] == ["reused-solution"] * len(checks)
    assert results["nina"].score == 0
    messages = "\n".join(c.message for c in results["nina"].checks)
    assert "roofline_time_us as _fast" in messages and "sg.reference_time_us" in messages
    assert [c.status for c in results["omar"].checks] == ["failed"] * len(checks) and results["omar"].score == 0
    assert any("nb00.check_roofline_time" in f for f in results["omar"].flags)


def test_graded_notebooks_time_briefly(monkeypatch):
    """Benchmark cells still run under the grader, but each measurement is cut short (LABKIT_TIMING)."""
    from labkit.course.runner import child_env as _child_env

    monkeypatch.delenv("LABKIT_TIMING", raising=False)
    assert _child_env(2)["LABKIT_TIMING"] == "brief"
    monkeypatch.setenv("LABKIT_TIMING", "full")
    assert _child_env(2)["LABKIT_TIMING"] == "full"
