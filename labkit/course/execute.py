"""Execute master notebooks in place (outputs stored), as authors do before committing them.

``python -m labkit.course.execute solutions/00_setup.ipynb`` runs the notebook in a fresh
kernel in this machine's mode and writes its outputs back, so that nbval has the outputs of
the ``# NBVAL_CHECK_OUTPUT`` cells to compare against.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute_in_place(path: str | Path, *, timeout: int = 600) -> None:
    """Run every cell of ``path`` in a fresh kernel (cwd = the notebook's folder) and save it."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, path)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"executing {arg}", flush=True)
        execute_in_place(arg)
