"""The library's layout as users see it: old flat module paths are the new modules, the names
the README and docs import resolve, and renamed names keep working with a warning."""

from __future__ import annotations

import importlib
import pkgutil
import re
import warnings
from pathlib import Path

import pytest

import spikingjelly_ff
from spikingjelly_ff import MOVED

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGE_MODULES = {m.name for m in pkgutil.iter_modules(spikingjelly_ff.__path__)} | set(MOVED)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_path_is_the_new_module(old):
    assert importlib.import_module(f"spikingjelly_ff.{old}") is importlib.import_module(f"spikingjelly_ff.{MOVED[old]}")


def test_top_level_names_resolve():
    for name in spikingjelly_ff.__all__:
        assert getattr(spikingjelly_ff, name) is not None


def _imports(text: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from spikingjelly_ff... import ...`` in ``text``."""
    found = []
    for module, grouped, line in re.findall(r"from (spikingjelly_ff[\w.]*) import (?:\(([^)]*)\)|([\w, ]+))", text):
        names = (grouped or line).replace("\n", ",").split(",")
        found.append((module, [n.split(" as ")[0].strip() for n in names if n.strip()]))
    return found


def _references(text: str) -> list[str]:
    """Dotted names into the library's module tree quoted in ``text`` (``spikingjelly_ff.x.y``);
    other names under the prefix (the proto package ``spikingjelly_ff.v1``, the entry-point group
    ``spikingjelly_ff.commands``) are not modules of the library and are left out."""
    refs = re.findall(r"`(spikingjelly_ff(?:\.\w+)+)", text)
    return [r for r in refs if r.split(".")[1] in PACKAGE_MODULES]


def _resolve(dotted: str):
    """The object a dotted name denotes: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_names_the_docs_import_resolve(doc):
    text = doc.read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the docs name no deprecated alias
        for module, names in _imports(text):
            mod = importlib.import_module(module)
            for name in names:
                assert hasattr(mod, name), f"{doc.name}: {module} has no {name}"
        for ref in _references(text):
            _resolve(ref)


def test_the_docs_import_something():
    assert any(_imports(p.read_text()) for p in DOCS)  # the check above is not vacuous


def test_runtime_load_model_is_a_deprecated_alias_of_load_exported():
    from spikingjelly_ff import runtime

    with pytest.warns(DeprecationWarning, match="use spikingjelly_ff.runtime.load_exported"):
        from spikingjelly_ff.runtime import load_model
    assert load_model is runtime.load_exported
    assert "load_model" not in runtime.__all__
    from spikingjelly_ff import load_model as load_run  # the run-directory loader keeps its name

    assert load_run is importlib.import_module("spikingjelly_ff.runs.checkpoint").load_model


def test_one_configs_copy_shipped_with_the_package():
    from spikingjelly_ff.runs.config import CONFIG_DIR

    assert CONFIG_DIR == ROOT / "spikingjelly_ff" / "configs"
    assert not (ROOT / "configs").exists()


def test_onnx_export_keeps_its_module_path():
    from spikingjelly_ff.export import onnx
    from spikingjelly_ff.export.onnx.analog import analog_to_onnx
    from spikingjelly_ff.export.onnx.spiking import spiking_to_onnx

    assert onnx.analog_to_onnx is analog_to_onnx and onnx.spiking_to_onnx is spiking_to_onnx
