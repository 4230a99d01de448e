"""Bounded loading of the YAML and JSON files users give (schemas, ``model.json``, ``checkpoint.json``,
``release.json``): every failure is the caller's input error, naming the file, and comes fast.

A file is read only if it is a regular file of at most ``max_bytes`` (:data:`MAX_YAML_BYTES`, :data:`MAX_JSON_BYTES`)
and is UTF-8 text (a byte-order mark is allowed). YAML is parsed by :class:`SafeYamlLoader`, PyYAML's safe loader
without anchors or aliases (so a "billion laughs" file fails at its first ``&``, instead of expanding into gigabytes)
and with at most :data:`MAX_DEPTH` levels of nesting; JSON may not nest deeper either. A missing file raises
``FileNotFoundError``, as ``open`` does; everything else raises the ``error`` class the caller passes (a
:class:`~zoobot_pipeline.errors.ZoobotPipelineError` subclass).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from zoobot_pipeline.errors import ZoobotPipelineError

__all__ = [
    "MAX_DEPTH", "MAX_JSON_BYTES", "MAX_YAML_BYTES", "SafeYamlLoader", "load_json", "load_json_object", "load_yaml",
    "parse_json", "parse_yaml", "read_text",
]

MAX_YAML_BYTES = 1 << 20
"""Largest YAML file read (1 MiB): a decision tree is a few kB."""
MAX_JSON_BYTES = 4 << 20
"""Largest JSON metadata file read (4 MiB): ``checkpoint.json`` with a long training history is tens of kB."""
MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted (the project's files nest 4 or 5 levels)."""

ErrorClass = type[ZoobotPipelineError]


def read_text(path: str | Path, error: ErrorClass = ZoobotPipelineError, what: str = "file",
              max_bytes: int = MAX_JSON_BYTES) -> str:
    """The text of the UTF-8 file ``path`` (``what``: e.g. "schema", for messages), at most ``max_bytes`` long.
    ``FileNotFoundError`` if it does not exist; ``error`` if it is not a regular file, cannot be read, is larger, or
    is not UTF-8."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise error(f"{path}: is {kind}, not a {what} file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise error(f"{path}: cannot read {what} file: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {_size(max_bytes)}, too large for a {what} file; is it the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r}); "
                    f"save the {what} file as UTF-8") from None


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests lists/dicts more than ``max_depth`` levels (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json(text: str, source: str, error: ErrorClass = ZoobotPipelineError,
               max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads(text)``; invalid or too deeply nested JSON raises ``error`` naming ``source``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{source}: invalid JSON ({err})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested deeper than {max_depth} levels") from None
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        raise error(f"{source}: invalid JSON ({err})") from None
    if _too_deep(value, max_depth):
        raise error(f"{source}: JSON nested deeper than {max_depth} levels")
    return value


def load_json(path: str | Path, error: ErrorClass = ZoobotPipelineError, what: str = "JSON",
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in the file ``path``, read and parsed within the bounds of the module docstring."""
    return parse_json(read_text(path, error, what, max_bytes), str(path), error, max_depth)


def load_json_object(path: str | Path, error: ErrorClass = ZoobotPipelineError, what: str = "JSON") -> dict[str, Any]:
    """Like :func:`load_json`, for a file that must hold one JSON object (``{...}``)."""
    value = load_json(path, error, what)
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object ({{...}}), got {type(value).__name__}")
    return value


class SafeYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python objects) that refuses anchors and aliases and nesting deeper than
    ``max_depth``: each refusal is a ``yaml.YAMLError`` at the first offending node, before anything is built."""

    max_depth = MAX_DEPTH

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 - PyYAML's name
        # Refused while scanning: the scanner's cost grows with the square of the open ``[``/``{`` count.
        if self.flow_level >= self.max_depth:
            raise yaml.scanner.ScannerError(None, None, f"nested deeper than {self.max_depth} levels",
                                            self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} is not allowed (no anchors or "
                                              "aliases in these files)", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, f"anchor &{event.anchor} is not allowed (no anchors or "
                                              "aliases in these files)", event.start_mark)
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {self.max_depth} levels",
                                                  event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str, source: str, error: ErrorClass = ZoobotPipelineError,
               loader: type[SafeYamlLoader] = SafeYamlLoader) -> Any:
    """The one YAML document in ``text`` (from ``source``), loaded with ``loader``; anything wrong raises
    ``error`` naming ``source``."""
    reader = None
    try:
        reader = loader(text)  # refuses unprintable characters at once
        reader.name = source  # for the "in FILE, line L, column C" of PyYAML's messages
        return reader.get_single_data()
    except yaml.YAMLError as err:
        raise error(f"{source}: not valid YAML: {err}") from None
    except RecursionError:
        raise error(f"{source}: YAML nested too deeply") from None
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, AttributeError) as err:
        # PyYAML's constructors of explicit tags (!!int, !!bool, !!timestamp...) fail so on values they cannot convert
        raise error(f"{source}: not valid YAML: an explicitly tagged value cannot be converted "
                    f"({type(err).__name__}: {err})") from None
    finally:
        if reader is not None:
            reader.dispose()


def load_yaml(path: str | Path, error: ErrorClass = ZoobotPipelineError, what: str = "YAML",
              loader: type[SafeYamlLoader] = SafeYamlLoader, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The YAML document in the file ``path``, read and parsed within the bounds of the module docstring."""
    return parse_yaml(read_text(path, error, what, max_bytes), str(path), error, loader)
