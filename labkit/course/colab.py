"""The course on Google Colab: the ONE place that names the course's repository.

An instructor who hosts the course elsewhere (a fork, a class organisation) changes
``COURSE_REPO`` (and ``COURSE_BRANCH`` if needed) below and runs ``labkit release``: every
master's and student notebook's first code cell (the setup cell) and its "Open in Colab" link
are generated from these two lines, and ``labkit release --check`` (a test) fails while a
notebook is out of step with them.

The setup cell, on Colab only: clones the course (labkit, its data: model weights and recorded
GPU results) or says what to do when it can't, installs labkit without touching Colab's torch,
triton or ipywidgets (``--no-deps``), then numba-cuda's CUDA 12 compiler wheels and the few
packages Colab lacks, and turns on Colab's widget manager. Anywhere else it does nothing.

CI installs labkit into its "Colab floor" environment with the same commands
(``python labkit/course/colab.py install-commands DIR`` prints them), so what CI tests is what
Colab runs. This file imports nothing from labkit: CI runs it before labkit is installed.
"""

from __future__ import annotations

import json
import re
import sys

COURSE_REPO = "https://github.com/gpu-decoding-course/labkit"  # instructors: your copy of the course
COURSE_BRANCH = "main"  # the branch the "Open in Colab" links and the clone use

COURSE_DIR = "/content/course"  # where the setup cell clones the course on Colab
# What the setup cell installs, in order. {course} is the course's folder. First the few packages
# Colab lacks, then labkit itself with --no-deps: its other dependencies are Colab's own (torch,
# triton, ipywidgets, numba, numpy, ...). In this order pip prints no "dependency conflicts" about
# labkit's instructor-only requirements (nbval, jupyterlab), which the notebooks never import.
PIP_INSTALLS = (
    'pip install -q "numba-cuda[cu12]" nbformat nbclient safetensors tqdm',
    "pip install -q --no-deps -e {course}",
)

SETUP_MARK = "# Setup. On Colab"  # a setup cell's source starts with this
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
LINK_MARK = "[![Open In Colab]"  # the link line in a notebook's first (markdown) cell starts with this


def _github_path(repo: str = COURSE_REPO) -> str | None:
    m = re.match(r"^(?:https?://|git@)github\.com[/:]([^/]+)/([^/]+?)(?:\.git)?/?$", repo.strip())
    return f"{m.group(1)}/{m.group(2)}" if m else None


def colab_url(notebook: str, repo: str = COURSE_REPO, branch: str = COURSE_BRANCH) -> str | None:
    """The URL that opens ``notebooks/<notebook>`` of the course on Colab (``None`` off GitHub)."""
    path = _github_path(repo)
    if path is None:
        return None
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{notebook}"


def link_line(notebook: str, repo: str = COURSE_REPO, branch: str = COURSE_BRANCH) -> str:
    """The "Open in Colab" line of a notebook's first cell (the student copy, in ``notebooks/``)."""
    url = colab_url(notebook, repo, branch)
    if url is None:  # Colab opens notebooks straight from GitHub only
        return f"{LINK_MARK}({BADGE})](https://colab.research.google.com/) — upload `notebooks/{notebook}`"
    return f"{LINK_MARK}({BADGE})]({url})"


def install_commands(course: str = COURSE_DIR) -> list[str]:
    """The setup cell's pip commands, for a course checked out at ``course``."""
    return [c.format(course=course) for c in PIP_INSTALLS]


def setup_cell_source(repo: str = COURSE_REPO, branch: str = COURSE_BRANCH) -> str:
    """The setup cell: the first code cell of every notebook (generated; edit this function, not the cells)."""
    pip = " && ".join(install_commands(COURSE_DIR))
    return f'''{SETUP_MARK}: fetch the course (labkit, its data: model weights and recorded GPU results),
# install numba-cuda's CUDA 12 compiler wheels, and turn on Colab's widget manager. Never
# reinstalls torch, triton or ipywidgets (Colab ships its own). Anywhere else this cell does
# nothing: run `make install` in the repository first. (Written by `labkit release`; the URL
# is set in labkit/course/colab.py.)
import sys
if "google.colab" in sys.modules:
    import os, subprocess
    COURSE_REPO = "{repo}"
    if not os.path.isdir("{COURSE_DIR}"):
        clone = subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", "{branch}", COURSE_REPO,
                                "{COURSE_DIR}"], capture_output=True, text=True)
        if clone.returncode:
            raise SystemExit(f"Could not download the course from {{COURSE_REPO}}. Check that this "
                             "Colab runtime is connected, then run this cell again. If it still fails, "
                             "ask your instructor for the course's address (or upload the course folder "
                             "to {COURSE_DIR} with Colab's Files panel) and run this cell again.")
    !{pip}
    sys.path.insert(0, "{COURSE_DIR}")
    from google.colab import output
    output.enable_custom_widget_manager()'''


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "install-commands":
        print("\n".join(install_commands(argv[1])))
        return 0
    if argv == ["setup-cell"]:
        print(setup_cell_source())
        return 0
    if argv == ["repo"]:
        print(json.dumps({"repo": COURSE_REPO, "branch": COURSE_BRANCH}))
        return 0
    print("usage: python labkit/course/colab.py install-commands DIR | setup-cell | repo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
