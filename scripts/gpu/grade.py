"""``labkit grade`` on a GPU: every master scores full points, its student release scores zero.

    PYTHONPATH=. python scripts/gpu/grade.py --out DIR [--notebooks 00_setup,02_numba_fused] [--jobs 4]

Grades each master in ``solutions/`` (as student "master") and its release made fresh with
``labkit.course.release.student_notebook`` (as student "released") in this machine's mode, writes
the gradebook and feedback under ``DIR/grade/``, prints one line per notebook and the batch's wall
time, and exits non-zero unless every master check passed with no flag, and every released check
failed with "not started" in its message and no exception text from inside a check (``raised``,
``Traceback``, ``All-NaN``): on a GPU a stub kernel's ``raise`` does not raise, and its output left
NaN must still read "not started".
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import labkit  # noqa: F401  (decides the mode before anything else loads)
import nbformat
from labkit.bench.records import run_meta, slug
from labkit.course.grade import grade
from labkit.course.release import master_paths, student_notebook
from labkit.paths import ROOT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results (grade/ is written inside)")
    parser.add_argument("--notebooks", default="", help="comma-separated master names (default: all)")
    parser.add_argument("--jobs", type=int, default=4, help="notebooks at once (they share the GPU)")
    parser.add_argument("--who", default="master,released", help="grade the masters, their releases, or both")
    parser.add_argument("--cell-timeout", type=float, default=600)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    wanted = {n.strip() for n in args.notebooks.split(",") if n.strip()}
    masters = [p for p in master_paths(ROOT / "solutions") if not wanted or p.stem in wanted]
    if not masters:
        print(f"no masters to grade (asked for {sorted(wanted)})", file=sys.stderr)
        return 2
    print(labkit.runtime.summary())
    with tempfile.TemporaryDirectory() as tmp:
        subs = Path(tmp)
        who = [w.strip() for w in args.who.split(",") if w.strip()]
        for w in ("master", "released"):
            (subs / w).mkdir()
        for path in masters:
            nb = nbformat.read(path, as_version=4)
            nbformat.write(nb, subs / "master" / path.name)
            nbformat.write(student_notebook(nb, path.name), subs / "released" / path.name)
        start = time.perf_counter()
        results = grade([subs / w for w in who], Path(args.out) / "grade", masters=ROOT / "solutions",
                        jobs=args.jobs, cell_timeout=args.cell_timeout, timeout=args.timeout, progress=False)
        seconds = time.perf_counter() - start

    bad = []
    print(f"{'student':<9} {'notebook':<24} {'points':>9}  statuses")
    for r in sorted(results, key=lambda r: (r.notebook, r.student)):
        statuses = [c.status for c in r.checks]
        print(f"{r.student:<9} {r.notebook:<24} {r.score:>4g}/{r.possible:<4g}  {' '.join(statuses)}")
        want = "passed" if r.student == "master" else "failed"
        bad += [f"{r.student}/{r.notebook} {c.exercise}: {c.status} (expected {want}): {c.message[:300]}"
                for c in r.checks if c.status != want]
        if r.student == "master":
            bad += [f"master/{r.notebook} flagged: {f}" for f in r.flags]
        else:
            bad += [f"released/{r.notebook} {c.exercise}: feedback does not say 'not started': {c.message[:300]}"
                    for c in r.checks if "not started" not in c.message]
            bad += [f"released/{r.notebook} {c.exercise}: exception text from a check: {c.message[:300]}"
                    for c in r.checks if any(t in c.message for t in ("raised ", "Traceback", "All-NaN"))]
    print(f"graded {len(results)} notebooks in {seconds:.0f} s with --jobs {args.jobs}")
    record = {"meta": {**run_meta(), "batch_seconds": round(seconds), "jobs": args.jobs}, "records": [],
              "grading": [{"student": r.student, "notebook": r.notebook, "points": r.score, "possible": r.possible,
                           "checks": [{"exercise": c.exercise, "status": c.status,
                                       "says_not_started": "not started" in c.message} for c in r.checks]}
                          for r in results]}
    path = Path(args.out) / f"grade_{slug(record['meta']['device'])}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"record -> {path}")
    for line in bad:
        print("FAIL", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
