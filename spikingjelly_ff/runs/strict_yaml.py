"""YAML as run configs are read: PyYAML's safe loader, refusing a mapping that names a key
twice (PyYAML keeps the last one silently)."""

from __future__ import annotations

import yaml

__all__ = ["YAMLInputError", "parse_yaml"]


class YAMLInputError(ValueError):
    """Text that is not valid YAML, or that names a key twice in one mapping."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int) -> None:
        super().__init__(f"duplicate key {key!r} (line {line})")


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming a key twice."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark.line + 1)
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeLoader says so
                    pass
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str, invalid: str = "not valid YAML"):
    """``text`` read by the strict safe loader; :class:`YAMLInputError` naming ``where`` if it cannot be."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as exc:
        raise YAMLInputError(f"{where}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise YAMLInputError(f"{where}: {invalid}: {exc}") from exc
