"""Save and load trained components as JSON plus ``.npz`` arrays, never pickle.

A component implements :class:`Persistable`: ``get_state()`` returns a JSON-able dict that may
hold numpy arrays (and nested component states from :func:`component_state`) anywhere;
``from_state(state)`` rebuilds it. Saving moves every array into one ``arrays.npz`` and
leaves ``{"$array": key}`` in ``artifact.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

from llmdispatch.registry import REGISTRY

FORMAT_VERSION = 1
_META = "artifact.json"
_ARRAYS = "arrays.npz"
#: The member of ``arrays.npz`` that names its save (as ``save_id`` in ``artifact.json``).
_SAVE_ID = "__save_id__"


@runtime_checkable
class Persistable(Protocol):
    """A component that can be saved without pickle."""

    registry_kind: ClassVar[str]
    registry_name: ClassVar[str]

    def get_state(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted component (arrays allowed)."""
        ...

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a fitted component from :meth:`get_state`'s output."""
        ...


class ArtifactError(ValueError):
    """An artifact that cannot be read; the message says which file and why."""


def component_state(obj: Persistable) -> dict[str, Any]:
    """A nested state node: which registered class, and its state."""
    return {"kind": obj.registry_kind, "name": obj.registry_name, "state": obj.get_state()}


def restore(node: dict[str, Any]) -> Any:
    """Rebuild a component from a node made by :func:`component_state`."""
    cls = REGISTRY.get(node["kind"], node["name"])
    return cls.from_state(node["state"])


def _extract(value: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise ArtifactError(f"{path}: object arrays cannot be saved without pickle")
        arrays[path] = value
        return {"$array": path}
    if isinstance(value, dict):
        return {str(k): _extract(v, arrays, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_extract(v, arrays, f"{path}/{i}") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _inject(value: Any, arrays: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$array"}:
            return np.asarray(arrays[value["$array"]])
        return {k: _inject(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_inject(v, arrays) for v in value]
    return value


def save_artifact(
    path: Path | str, obj: Persistable, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``obj`` to folder ``path`` (created) as ``artifact.json`` + ``arrays.npz``.

    Both files are written under temporary names and renamed into place, arrays first, and
    both carry one random save id: a reader that meets the arrays of one save and the JSON of
    another (a save in progress, or one interrupted between the renames) gets a clear
    :class:`ArtifactError` from :func:`load_artifact`, never a model mixed from two saves.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    tree = _extract(component_state(obj), arrays, "root")
    save_id = os.urandom(8).hex()
    arrays[_SAVE_ID] = np.array(save_id)
    doc = {
        "format": FORMAT_VERSION,
        "save_id": save_id,
        "metadata": metadata or {},
        "component": tree,
    }
    tmp_meta, tmp_arrays = path / (_META + ".tmp"), path / (_ARRAYS + ".tmp")
    tmp_meta.write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")
    with tmp_arrays.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]
    tmp_arrays.replace(path / _ARRAYS)
    tmp_meta.replace(path / _META)
    return path


def artifact_files(path: Path | str) -> tuple[Path, Path]:
    """The two files of an artifact (folder, or its ``artifact.json``): JSON and arrays."""
    path = Path(path)
    meta_file = path / _META if path.is_dir() or path.suffix != ".json" else path
    return meta_file, meta_file.parent / _ARRAYS


def load_artifact(path: Path | str) -> tuple[Any, dict[str, Any]]:
    """Read an artifact folder (or its ``artifact.json``); returns (component, metadata)."""
    path = Path(path)
    meta_file = path / _META if path.is_dir() else path
    folder = meta_file.parent
    if not meta_file.is_file():
        raise ArtifactError(f"{path}: no {_META} (is this a trained artifact folder?)")
    try:
        doc = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_file}: not valid JSON ({exc.msg})") from None
    if doc.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{meta_file}: unsupported artifact format {doc.get('format')!r}")
    with np.load(folder / _ARRAYS, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    found = str(arrays.pop(_SAVE_ID)) if _SAVE_ID in arrays else None
    if "save_id" in doc and found != doc["save_id"]:
        raise ArtifactError(
            f"{folder}: {_META} and {_ARRAYS} come from different saves (a save in progress, "
            "or one interrupted); save the artifact again"
        )
    tree = _inject(doc["component"], arrays)
    return restore(tree), doc.get("metadata", {})
