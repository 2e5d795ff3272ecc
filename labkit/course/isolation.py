"""Isolation for ``labkit grade``: a pristine, read-only labkit per worker, private folders per run.

Submissions are untrusted code. Each batch takes one snapshot of the grader's own ``labkit``
package (compiled, so no kernel needs to write bytecode) and of ``data/`` into memory, and
writes one read-only copy of it per worker ("slot") under a temporary folder of its own. A
notebook's kernel imports labkit from its slot (first on ``PYTHONPATH``), never from the
grader's checkout. After every notebook the grader compares its slot with the snapshot
(every path and every file's SHA-256): a slot that changed marks that submission
``tampered``, and is rewritten from the snapshot before the slot's next notebook.

Each run also gets a private folder: the kernel's working directory, ``HOME`` and every cache
(IPython, Jupyter, Matplotlib, Triton, Numba), so nothing one notebook writes there reaches
another notebook. The kernel starts with no import route to the grader's own checkout (an
editable install's finder would otherwise supply ``labkit.*`` from it whenever the slot lacks
a module), and the checkout itself is compared with the snapshot after every notebook too: a
change there is reported, never undone (an instructor's own edits are not the grader's to revert).
"""

from __future__ import annotations

import compileall
import hashlib
import os
import py_compile
import shutil
import stat
import tempfile
from pathlib import Path

import labkit
from labkit.paths import ROOT

PACKAGE = Path(labkit.__file__).resolve().parent
SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".git"}


def _files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(dirpath) / name


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def differences(found: dict[str, str], expected: dict[str, str]) -> list[str]:
    """``"PATH changed"``, ``"PATH removed"``, ``"PATH added"`` for each path whose digest differs."""
    diff = [f"{rel} changed" for rel in sorted(found.keys() & expected.keys()) if found[rel] != expected[rel]]
    diff += [f"{rel} removed" for rel in sorted(expected.keys() - found.keys())]
    diff += [f"{rel} added" for rel in sorted(found.keys() - expected.keys())]
    return diff


class Snapshot:
    """The pristine tree, in memory: relative path -> bytes (labkit/ compiled, data/).

    ``package`` defaults to the grader's own labkit, ``data`` to its ``data/`` folder (None: none).
    ``masters``, the folder of master notebooks, is watched (:meth:`source_state`) but never copied:
    a slot is readable by the notebooks graded in it, and the masters hold the answers.
    """

    def __init__(self, package: Path | None = None, data: Path | None = ROOT / "data", masters: Path | None = None):
        self.files: dict[str, bytes] = {}
        self.sources: dict[str, Path] = {}  # prefix -> the folder it was read from
        for src, prefix in ((package or PACKAGE, "labkit"), (data, "data"), (masters, "solutions")):
            if src is None or not Path(src).is_dir():
                continue
            self.sources[prefix] = Path(src)
            if prefix != "solutions":
                for path in _files(Path(src)):
                    self.files[f"{prefix}/{path.relative_to(src).as_posix()}"] = path.read_bytes()
        watched = {p: s for p, s in self.sources.items() if p == "solutions"}
        # as read, before bytecode joins the snapshot; the masters as they are now
        self.source_digest = {**self.digest(), **self._state(watched)}
        self._compiled = False

    def write(self, root: Path) -> None:
        """Write the tree under ``root`` (which must not exist), compiled, read-only."""
        root.mkdir(parents=True)
        for rel, data in self.files.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if not self._compiled:  # the first slot: compile, then keep the bytecode in the snapshot
            compileall.compile_dir(str(root / "labkit"), quiet=1,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            for path in (root / "labkit").rglob("*.pyc"):
                self.files[path.relative_to(root).as_posix()] = path.read_bytes()
            self._compiled = True
        make_read_only(root)

    def digest(self) -> dict[str, str]:
        return {rel: _sha(data) for rel, data in self.files.items()}

    def source_state(self) -> dict[str, str]:
        """The folders the snapshot was read from, and the masters, as they are now: relative path -> SHA-256.

        Grading reads only the snapshot (and the masters as loaded when the batch started), so a run
        that writes the grader's own checkout (by its path) changes no grade of this batch, but would
        change the next batch's: compare this with :attr:`source_digest` (:func:`differences`) to find it.
        """
        return self._state(self.sources)

    @staticmethod
    def _state(sources: dict[str, Path]) -> dict[str, str]:
        found: dict[str, str] = {}
        for prefix, src in sources.items():
            for path in _files(src):
                rel = f"{prefix}/{path.relative_to(src).as_posix()}"
                try:
                    found[rel] = _sha(path.read_bytes())
                except OSError:
                    found[rel] = "unreadable"
        return found


def make_read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)


def remove_tree(root: Path) -> None:
    """Remove ``root`` even where a run left it read-only."""
    def onerror(func, path, _exc):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, stat.S_IRWXU)
            func(path)
        except OSError:
            pass
    if os.path.lexists(root):
        for dirpath, _, _ in os.walk(root):
            try:
                os.chmod(dirpath, 0o700)
            except OSError:
                pass
        shutil.rmtree(root, onerror=onerror)


def changes(root: Path, expected: dict[str, str]) -> list[str]:
    """What differs between the tree at ``root`` and ``expected`` (relative path -> SHA-256)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            try:
                found[rel] = _sha(path.read_bytes()) if not path.is_symlink() else "link"
            except OSError:
                found[rel] = "unreadable"
    return differences(found, expected)


class Slots:
    """One pristine copy per worker. ``take()``/``give(slot)`` hand them out; ``check(slot)`` verifies one."""

    def __init__(self, count: int, snapshot: Snapshot | None = None):
        self.snapshot = snapshot or Snapshot()
        self.roots: list[Path] = []
        self._expected: dict[str, str] | None = None
        import queue

        self._free: queue.Queue = queue.Queue()
        try:
            for _ in range(count):
                root = Path(tempfile.mkdtemp(prefix="lk-"))  # each in a folder of its own, not side by side
                self.snapshot.write(root / "pristine")
                self.roots.append(root / "pristine")
                self._free.put(len(self.roots) - 1)
            self._expected = self.snapshot.digest()
        except BaseException:
            self.close()
            raise

    def take(self) -> int:
        return self._free.get()

    def give(self, slot: int) -> None:
        self._free.put(slot)

    def check(self, slot: int) -> list[str]:
        """What changed in ``slot`` since it was written ([] when nothing); a changed slot is rewritten."""
        diff = changes(self.roots[slot], self._expected or {})
        if diff:
            remove_tree(self.roots[slot].parent)
            self.snapshot.write(self.roots[slot])
        return diff

    def close(self) -> None:
        for root in self.roots:
            remove_tree(root.parent)
        self.roots = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Variables a run never inherits from the grader: paths into the grader's checkout or caches, options
# meant for an outer pytest, anything a kernel could use to find the grader's files.
DROPPED_ENV = ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "LABKIT_GRADE_LOG",
               "LABKIT_DATA", "JUPYTER_PATH", "IPYTHONDIR", "TRITON_CACHE_DIR", "NUMBA_CACHE_DIR", "MPLCONFIGDIR",
               "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR",
               "JUPYTER_RUNTIME_DIR", "OLDPWD", "PWD")


def _user_site() -> dict[str, str]:
    """Keep the grader's user site-packages (``pip install --user``) where its packages live; else none.

    A run's ``HOME`` is private, which would move the user site: when the grader imports packages
    from its own user site, the run is pointed at it (``PYTHONUSERBASE``); otherwise user sites are off.
    """
    import site
    import sys

    user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
    if user_site and os.path.isdir(user_site) and user_site in sys.path:
        return {"PYTHONUSERBASE": site.getuserbase()}
    return {"PYTHONNOUSERSITE": "1"}


def _package_dirs(pythonpath: str) -> list[str]:
    """The grader's ``PYTHONPATH`` entries that hold third-party packages (nbval, Jupyter, ...).

    A machine whose Jupyter stack lives on ``PYTHONPATH`` (wheels unpacked into a folder) needs them
    in every run; an entry that holds a ``labkit`` (the grader's checkout) is never passed on.
    """
    return [p for p in pythonpath.split(os.pathsep) if p and os.path.isdir(p) and not os.path.exists(os.path.join(p, "labkit"))]


_NO_FALLBACK: list[str] = []


def _no_fallback_dir() -> str:
    """A folder whose ``labkit`` refuses to import, placed right after a run's pristine copy.

    If another run deletes this run's copy (untrusted code can), ``import labkit`` must fail,
    not fall through to the grader's own installed checkout (an editable install's finder),
    which the run could then rewrite.
    """
    if not _NO_FALLBACK or not os.path.isdir(_NO_FALLBACK[0]):
        folder = Path(tempfile.mkdtemp(prefix="labkit-grader-guard-"))
        (folder / "labkit").mkdir()
        (folder / "labkit" / "__init__.py").write_text(
            'raise ImportError("the grader\'s pristine copy of labkit is missing: this run cannot import labkit")\n')
        _NO_FALLBACK[:] = [str(folder)]
    return _NO_FALLBACK[0]


def remove_no_fallback() -> None:
    """Remove the folder :func:`_no_fallback_dir` made (at the end of a batch; the next makes a new one)."""
    if _NO_FALLBACK:
        remove_tree(Path(_NO_FALLBACK.pop()))


# Run by the kernel before any cell (an IPython startup file). PYTHONPATH puts the pristine copy first,
# but a meta-path finder (setuptools' editable install) answers for ``labkit.<module>`` whenever the
# copy lacks that module, e.g. after another run deleted part of it: without this, such an import
# would come from the grader's checkout, which the notebook could then rewrite.
NO_CHECKOUT_FINDER = """\
import importlib.machinery as _m
import sys as _s

_standard = (_m.PathFinder, _m.BuiltinImporter, _m.FrozenImporter)


def _supplies_labkit(finder):
    if finder in _standard or isinstance(finder, _standard):
        return False
    try:
        return finder.find_spec("labkit", None) is not None
    except Exception:
        return False


_s.meta_path[:] = [f for f in _s.meta_path if not _supplies_labkit(f)]
del _m, _s, _standard, _supplies_labkit
"""


def run_env(base: dict[str, str], pristine: Path, private: Path) -> dict[str, str]:
    """The environment of one run's pytest and kernel: labkit from ``pristine``; home and caches in ``private``."""
    env = {k: v for k, v in base.items() if k not in DROPPED_ENV}
    home = private / "home"
    for sub in ("", ".ipython", ".jupyter", ".jupyter-data", ".jupyter-runtime", ".cache", ".config", ".mpl",
                ".triton", ".numba"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    startup = home / ".ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-labkit-grader.py").write_text(NO_CHECKOUT_FINDER)
    env.update(_user_site())
    env.update({
        "PYTHONPATH": os.pathsep.join([str(pristine), _no_fallback_dir(), *_package_dirs(base.get("PYTHONPATH", ""))]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": str(home), "IPYTHONDIR": str(home / ".ipython"), "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".jupyter-data"), "JUPYTER_RUNTIME_DIR": str(home / ".jupyter-runtime"),
        "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
        "MPLCONFIGDIR": str(home / ".mpl"), "TRITON_CACHE_DIR": str(home / ".triton"),
        "NUMBA_CACHE_DIR": str(home / ".numba"), "LABKIT_DATA": str(pristine / "data"),
    })
    return env
