"""Reading a configuration file safely: bounded YAML (or JSON), ``${VAR}`` from the environment, positions.

* Safe YAML only: PyYAML's safe loader (libyaml when available), never arbitrary Python tags.
* Bounded: the raw size is checked before parsing (``MAX_BYTES``), nesting depth is checked on the event stream
  before any node is built (``MAX_DEPTH``; the composer recurses), and the document is refused when aliases would
  expand it past ``MAX_NODES`` nodes or refer back into themselves (a "billion laughs" file is refused in
  milliseconds, never expanded). A key given twice in one mapping is an error, not "last one wins".
* YAML 1.2 scalars: only ``true``/``false`` are booleans (``on``/``no`` stay strings) and dates stay strings, so
  ``anthropic-version: 2023-06-01`` is the string a header needs.
* ``${NAME}`` in a string is replaced by the environment variable (``${NAME:-default}`` when unset or empty);
  ``$${`` is a literal ``${``. A missing variable is an error naming it, with its position. An unquoted scalar is
  typed after substitution (``port: ${PORT}`` is an integer), a quoted one stays a string.
* Every location can be mapped back to a line and column (:meth:`Source.position`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..validation import unique_keys
from .errors import ConfigError, Problem, dotted

#: Larger files are refused before parsing. Thousands of gateways and tens of thousands of keys fit.
MAX_BYTES = 8 * 1024 * 1024
#: Collections nested deeper than this are refused (the schema itself is about 8 deep).
MAX_DEPTH = 64
#: Nodes of the document once aliases are expanded.
MAX_NODES = 1_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader with YAML 1.2 core-schema scalars (see the module docstring)."""


_Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9]*)$", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
     r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     "-+0123456789."),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_MERGE_TAG, r"^(?:<<)$", "<"),
):
    _Loader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))
#: The loader's implicit scalar types (the exporter quotes every string one of them would read as another type).
LOADER_RESOLVERS: dict = _Loader.yaml_implicit_resolvers


@dataclass
class Source:
    """A parsed document: its data, where each part of it is in the file, and which strings came from the
    environment (``interpolated``, by path)."""

    data: Any
    name: str
    root: Node | None = None
    interpolated: set[tuple] = field(default_factory=set)

    def position(self, path: tuple, *, at_key: bool = False) -> tuple[int, int] | None:
        """1-based (line, column) of the deepest part of ``path`` found in the file (None for JSON input); with
        ``at_key``, of the key naming the last part rather than its value."""
        node = self.root
        found = node
        for index, part in enumerate(path):
            child = _child(node, part, key=at_key and index == len(path) - 1)
            if child is None:
                break
            node = found = child
        if found is None:
            return None
        return found.start_mark.line + 1, found.start_mark.column + 1

    def problem(self, path: tuple, msg: str, *, at_key: bool = False) -> Problem:
        where = self.position(path, at_key=at_key)
        return Problem(dotted(path), msg, *(where or (None, None)))

    def error(self, path: tuple, msg: str, *, status: int = 400) -> ConfigError:
        return ConfigError(self.problem(path, msg), source=self.name, status=status)


def _child(node: Node | None, part: Any, *, key: bool = False) -> Node | None:
    if isinstance(node, MappingNode):
        for key_node, value in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                return key_node if key else value
    elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


# ------------------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------------------


def read_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Source:
    """Parse the file at ``path`` (by its size first: a file over MAX_BYTES is not read)."""
    name = os.fspath(path)
    try:
        size = os.stat(name).st_size
        if size > MAX_BYTES:
            raise _too_large(name, size)
        with open(name, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(Problem("", "no such file"), source=name) from None
    except IsADirectoryError:
        raise ConfigError(Problem("", "is a directory, not a configuration file"), source=name) from None
    except OSError as exc:
        raise ConfigError(Problem("", f"cannot read it: {exc.strerror or exc}"), source=name) from None
    return parse_yaml(raw, name=name, env=env)


def parse_yaml(raw: bytes | str, *, name: str = "<config>", env: Mapping[str, str] | None = None) -> Source:
    """Parse YAML text (JSON is YAML too) into a :class:`Source`."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data) > MAX_BYTES:
        raise _too_large(name, len(data))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(Problem("", f"not UTF-8 text (byte {exc.start})"), source=name) from None
    if not text.strip():
        raise ConfigError(Problem("", "the file is empty; expected a mapping with 'gateways'"), source=name)
    try:
        _check_depth(text, name)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                raise ConfigError(Problem("", "the file holds no document"), source=name)
            _check_graph(root, name)
            source = Source(data=None, name=name, root=root)
            _interpolate(source, root, (), env if env is not None else os.environ, loader, {})
            source.data = loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(part) for part in (exc.context, exc.problem) if part) or "invalid YAML"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise ConfigError(Problem("", f"YAML syntax: {problem}", line, column), source=name) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem("", f"YAML: {' '.join(str(exc).split())}"), source=name) from None
    except RecursionError:
        raise ConfigError(Problem("", f"nested deeper than {MAX_DEPTH} levels"), source=name) from None
    return source


def parse_json(raw: bytes, *, name: str = "<config>", env: Mapping[str, str] | None = None) -> Source:
    """Parse a JSON body (the admin API): strict JSON, duplicate keys refused, strings interpolated (they stay
    strings: JSON has its own types)."""
    if len(raw) > MAX_BYTES:
        raise _too_large(name, len(raw))
    try:
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=unique_keys, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise ConfigError(Problem("", f"not UTF-8 text (byte {exc.start})"), source=name) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(Problem("", f"malformed JSON: {exc.msg}", exc.lineno, exc.colno), source=name) from None
    except ValueError as exc:
        raise ConfigError(Problem("", f"malformed JSON: {exc}"), source=name) from None
    except RecursionError:
        raise ConfigError(Problem("", f"nested deeper than {MAX_DEPTH} levels"), source=name) from None
    source = Source(data=None, name=name)
    source.data = _interpolate_data(source, data, (), env if env is not None else os.environ, 0)
    return source


def _too_large(name: str, size: int) -> ConfigError:
    return ConfigError(Problem("", f"the file is {size / 1e6:.1f} MB; the limit is {MAX_BYTES // (1024 * 1024)} MiB"),
                       source=name, status=413)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# ------------------------------------------------------------------------------------------------------------
# Bounds
# ------------------------------------------------------------------------------------------------------------


def _check_depth(text: str, name: str) -> None:
    """Walk the event stream (iterative in the parser) and refuse deep nesting before composing nodes."""
    loader = _Loader(text)
    depth = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    raise ConfigError(Problem("", f"nested deeper than {MAX_DEPTH} levels",
                                              mark.line + 1, mark.column + 1), source=name)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    finally:
        loader.dispose()


def _check_graph(root: Node, name: str) -> None:
    """Refuse recursive aliases and alias expansion past MAX_NODES (memoised: linear in the distinct nodes), and
    duplicate or non-scalar mapping keys."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        ident = id(node)
        children = _children(node)
        if done:
            active.discard(ident)
            total = 1 + sum(sizes[id(child)] for child in children)
            if total > MAX_NODES:
                raise _at(name, node, f"aliases expand the document past {MAX_NODES:,} nodes; refusing it")
            sizes[ident] = total
            continue
        if ident in sizes:
            continue
        if ident in active:
            raise _at(name, node, "an alias refers to the node that contains it (recursive document)")
        active.add(ident)
        if isinstance(node, MappingNode):
            _check_keys(node, name)
        stack.append((node, True))
        for child in children:
            if id(child) in active:
                raise _at(name, child, "an alias refers to the node that contains it (recursive document)")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _check_keys(node: MappingNode, name: str) -> None:
    seen: set[str] = set()
    for key, _ in node.value:
        if key.tag == _MERGE_TAG:
            continue
        if not isinstance(key, ScalarNode):
            raise _at(name, key, "a mapping key must be a plain string")
        if key.value in seen:
            raise _at(name, key, f"duplicate key {key.value!r} in one mapping")
        seen.add(key.value)


def _at(name: str, node: Node, msg: str) -> ConfigError:
    return ConfigError(Problem("", msg, node.start_mark.line + 1, node.start_mark.column + 1), source=name)


# ------------------------------------------------------------------------------------------------------------
# ${VAR} from the environment
# ------------------------------------------------------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> tuple[str, bool]:
    """``text`` with every ``${NAME}`` / ``${NAME:-default}`` replaced; whether any was. Raises ``KeyError`` (the
    variable's name) for a missing one and ``ValueError`` for a malformed reference."""
    used = False

    def one(match: re.Match[str]) -> str:
        nonlocal used
        if match.group(0) == "$${":
            return "${"
        inner = match.group(1)
        var, sep, default = inner.partition(":-")
        if not _VAR_NAME.fullmatch(var):
            raise ValueError(f"malformed reference ${{{inner}}}: expected ${{NAME}} or ${{NAME:-default}} "
                             "(write $${ for a literal ${)")
        used = True
        value = env.get(var)
        if value:
            return value
        if sep:
            return default
        raise KeyError(var)

    if "${" not in text:
        return text, False
    return _VAR.sub(one, text), used


def _expand_at(source: Source, path: tuple, text: str, env: Mapping[str, str]) -> tuple[str, bool]:
    try:
        return expand(text, env)
    except KeyError as exc:
        var = exc.args[0]
        state = "is empty" if var in env else "is not set"
        raise source.error(path, f"environment variable {var} {state} (the file reads it as ${{{var}}})") from None
    except ValueError as exc:
        raise source.error(path, str(exc)) from None


def _interpolate(source: Source, node: Node, path: tuple, env: Mapping[str, str], loader: Any,
                 done: dict[int, bool]) -> None:
    """Substitute in scalar values (never in keys), each node once (aliases share nodes); record the paths."""
    if isinstance(node, ScalarNode):
        if id(node) not in done:
            done[id(node)] = False
            if "${" in node.value:
                value, used = _expand_at(source, path, node.value, env)
                if used or value != node.value:
                    node.value = value
                    if not node.style:  # unquoted (libyaml: "", PyYAML: None): typed like any unquoted scalar
                        node.tag = loader.resolve(ScalarNode, value, (True, False))
                done[id(node)] = used
        if done[id(node)]:
            source.interpolated.add(path)
    elif isinstance(node, SequenceNode):
        for index, child in enumerate(node.value):
            _interpolate(source, child, (*path, index), env, loader, done)
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                for merged in (value.value if isinstance(value, SequenceNode) else [value]):
                    _interpolate(source, merged, path, env, loader, done)
            else:
                _interpolate(source, value, (*path, key.value), env, loader, done)


def _interpolate_data(source: Source, value: Any, path: tuple, env: Mapping[str, str], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise source.error(path, f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        text, used = _expand_at(source, path, value, env)
        if used:
            source.interpolated.add(path)
        return text
    if isinstance(value, list):
        return [_interpolate_data(source, item, (*path, i), env, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: _interpolate_data(source, item, (*path, key), env, depth + 1) for key, item in value.items()}
    return value
