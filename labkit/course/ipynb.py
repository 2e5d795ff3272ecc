"""Notebook files (nbformat 4) read and written with the standard library alone, as nbformat does.

``labkit release`` must run where only Python is installed: it is the course's own release
check, run before any of labkit's dependencies (torch, nbformat) may be there. It needs no
more of nbformat than its file format, so this module reads and writes that format and
nothing else: sources and text outputs stored as lists of lines, keys sorted, one space of
indent, ``ensure_ascii`` off. Grading, which runs notebooks, uses nbformat itself, and
``tests/test_foundation.py`` checks that every notebook round-trips to nbformat's bytes.
"""

from __future__ import annotations

import copy
import json

_SPLIT_MIMES = {"application/javascript", "image/svg+xml"}  # split like text/*, as nbformat does


def _is_json_mime(mime: str) -> bool:
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _fields(cell: dict) -> list[tuple[dict, str, str]]:
    """``(container, key, kind)`` of a cell's multi-line fields: its source, each output's text
    (kind ``"text"``) and each entry of its outputs' and attachments' bundles (kind: the mime type)."""
    found = [(cell, "source", "source")]
    bundles = list(cell.get("attachments", {}).values())
    for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
        if out.get("output_type") in ("execute_result", "display_data"):
            bundles.append(out.get("data", {}))
        elif "text" in out:
            found.append((out, "text", "text" if out.get("output_type") == "stream" else "other"))
    return found + [(data, mime, mime) for data in bundles for mime in data]


def reads(text: str, name: str = "notebook") -> dict:
    """A notebook from its file's text: a plain dict, multi-line strings joined."""
    nb = json.loads(text)
    if nb.get("nbformat") != 4:
        raise ValueError(f"{name}: nbformat {nb.get('nbformat')!r}, expected 4")
    for cell in nb.get("cells", []):
        for box, key, kind in _fields(cell):
            value = box.get(key)
            if not _is_json_mime(kind) and isinstance(value, list) and all(isinstance(v, str) for v in value):
                box[key] = "".join(value)
    return nb


def writes(nb: dict) -> str:
    """The file text of notebook ``nb``, byte for byte what ``nbformat.writes`` gives (no newline at the end)."""
    nb = copy.deepcopy(dict(nb))
    for key in ("orig_nbformat", "orig_nbformat_minor", "signature"):
        nb.get("metadata", {}).pop(key, None)
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("trusted", None)
        for box, key, kind in _fields(cell):
            if isinstance(box.get(key), str) and (kind in ("source", "text") or kind.startswith("text/")
                                                  or kind in _SPLIT_MIMES):
                box[key] = box[key].splitlines(True)
    return json.dumps(nb, indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=False)


__all__ = ["reads", "writes"]
