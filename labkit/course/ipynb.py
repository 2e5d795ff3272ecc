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


def _outputs(cell: dict) -> list:
    return cell.get("outputs", []) if cell.get("cell_type") == "code" else []


def reads(text: str, name: str = "notebook") -> dict:
    """A notebook from its file's text: a plain dict, multi-line strings joined."""
    nb = json.loads(text)
    if nb.get("nbformat") != 4:
        raise ValueError(f"{name}: nbformat {nb.get('nbformat')!r}, expected 4")
    for cell in nb.get("cells", []):
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
        bundles = list(cell.get("attachments", {}).values())
        for out in _outputs(cell):
            if out.get("output_type") in ("execute_result", "display_data"):
                bundles.append(out.get("data", {}))
            elif isinstance(out.get("text"), list):
                out["text"] = "".join(out["text"])
        for data in bundles:
            for key, value in data.items():
                if not _is_json_mime(key) and isinstance(value, list) and all(isinstance(v, str) for v in value):
                    data[key] = "".join(value)
    return nb


def writes(nb: dict) -> str:
    """The file text of notebook ``nb``, byte for byte what ``nbformat.writes`` gives (no newline at the end)."""
    nb = copy.deepcopy(dict(nb))
    for key in ("orig_nbformat", "orig_nbformat_minor", "signature"):
        nb.get("metadata", {}).pop(key, None)
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("trusted", None)
        if isinstance(cell.get("source"), str):
            cell["source"] = cell["source"].splitlines(True)
        bundles = list(cell.get("attachments", {}).values())
        for out in _outputs(cell):
            if out.get("output_type") in ("execute_result", "display_data"):
                bundles.append(out.get("data", {}))
            elif out.get("output_type") == "stream" and isinstance(out.get("text"), str):
                out["text"] = out["text"].splitlines(True)
        for data in bundles:
            for key, value in data.items():
                if isinstance(value, str) and (key.startswith("text/") or key in _SPLIT_MIMES):
                    data[key] = value.splitlines(True)
    return json.dumps(nb, indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=False)


__all__ = ["reads", "writes"]
