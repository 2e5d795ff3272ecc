"""The ``labkit`` command: ``doctor``, ``bench``, ``release`` and ``grade``."""

from __future__ import annotations

import argparse
import sys


def _doctor(args) -> int:
    from labkit.doctor import doctor

    return 0 if doctor().ok else 1


def _bench(args) -> int:
    from labkit.bench.report import run_report

    return run_report(args)


def _release(args) -> int:
    from labkit.course.release import ReleaseError, release  # the standard library only

    try:
        result = release(args.src, args.dst, check=args.check)
    except ReleaseError as exc:
        print(f"labkit release: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if result.stale:
            print("out of step (student notebooks, or a master's setup cell or Colab link); run `labkit release` "
                  "and commit:", file=sys.stderr)
            for p in result.stale:
                print(f"  {p}", file=sys.stderr)
            return 1
        print("notebooks/ is in step with solutions/")
        return 0
    for p in result.written:
        print(f"wrote {p}")
    return 0


def _grade(args) -> int:
    from labkit.course.grade import main as grade_main

    return grade_main(args)


def build_parser() -> argparse.ArgumentParser:
    from labkit.paths import ROOT

    parser = argparse.ArgumentParser(prog="labkit", description="GPU kernels for LLM decoding: course tools")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="check the GPU, versions and that tiny Numba and Triton kernels run")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("bench", help="the speedup report: one section per notebook, a summary of each headline")
    try:  # the benchmarks need torch; `labkit release` must run without it
        from labkit.bench.report import add_arguments

        add_arguments(p)
    except ImportError:
        pass
    p.set_defaults(func=_bench)

    p = sub.add_parser("release", help="write student notebooks/ from the masters in solutions/")
    p.add_argument("--src", default=str(ROOT / "solutions"), help="folder of master notebooks")
    p.add_argument("--dst", default=str(ROOT / "notebooks"), help="folder for student notebooks")
    p.add_argument("--check", action="store_true", help="write nothing; fail if notebooks/ is stale")
    p.set_defaults(func=_release)

    p = sub.add_parser("grade", help="grade submitted notebooks through nbval and write a gradebook")
    try:
        from labkit.course.grade import add_arguments as grade_args

        grade_args(p)
    except ImportError:
        pass
    p.set_defaults(func=_grade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
