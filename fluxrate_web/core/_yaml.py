"""YAML with line numbers, for :mod:`fluxrate_web.core.config`.

PyYAML's node API (``yaml.compose`` with the safe loader) keeps the line of every value. This
module turns a document into plain Python values and a side table ``{path: line}``, where a path
is a tuple of mapping keys and list indices (``("endpoints", 2, "quantity")``). Every problem is
raised as :class:`YamlProblem` carrying a 1-based line, never as a PyYAML exception.

``${NAME}`` and ``${NAME:-default}`` are interpolated in string values (not in keys, and not in
the raw text, so a variable can never inject YAML). A plain (unquoted) scalar that contained a
reference is re-typed after interpolation (``max_attempts: ${ATTEMPTS:-8}`` is the integer 8);
a quoted one stays a string. ``$${`` is a literal ``${``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["Path", "YamlProblem", "interpolate", "load_yaml"]

Path = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp")
)
_MAX_DEPTH = 64
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class YamlProblem(Exception):
    """A problem at a line (1-based) and a path inside the document."""

    def __init__(self, line: int, path: Path, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.path = path
        self.message = message


def interpolate(text: str, env: Mapping[str, str], line: int, path: Path) -> str:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in ``text``; ``$${`` stays a literal ``${``."""

    def replace(match: re.Match[str]) -> str:
        body = match.group(1)
        if body is None:
            return "${"
        name, sep, default = body.partition(":-")
        if not _NAME.match(name):
            raise YamlProblem(
                line,
                path,
                f"bad environment reference '${{{body}}}': "
                "expected ${NAME} or ${NAME:-default}",
            )
        value = env.get(name)
        if value is None or (sep and value == ""):
            if sep:
                return default
            raise YamlProblem(
                line,
                path,
                f"environment variable {name} is not set "
                f"(write ${{{name}:-}} to allow it to be empty)",
            )
        return value

    if "$" not in text:
        return text
    if "${" in _REF.sub("", text):  # an unterminated reference
        raise YamlProblem(line, path, "unterminated '${' (write '$${' for a literal '${')")
    return _REF.sub(replace, text)


def _line_of(exc: BaseException, text: str) -> int:
    for attr in ("problem_mark", "context_mark"):
        mark = getattr(exc, attr, None)
        if mark is not None and isinstance(getattr(mark, "line", None), int):
            return int(mark.line) + 1
    position = getattr(exc, "position", None)  # yaml.reader.ReaderError
    if isinstance(position, int):
        return text.count("\n", 0, position) + 1
    return 1


def _describe(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if isinstance(exc, yaml.reader.ReaderError):
        return f"unacceptable character #x{exc.character:04x}: {exc.reason}"
    parts = [p for p in (context, problem) if isinstance(p, str) and p]
    return "; ".join(parts) if parts else str(exc).splitlines()[0]


class _Builder:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[Path, int] = {}
        self._constructor = yaml.SafeLoader("")  # only its resolver and scalar constructors
        self._stack: set[int] = set()

    def _resolve(self, text: str) -> str:
        tag: str = self._constructor.resolve(  # type: ignore[no-untyped-call]
            yaml.ScalarNode, text, (True, False)
        )
        return tag

    def build(self, node: yaml.Node, path: Path, depth: int = 0) -> Any:
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        if depth > _MAX_DEPTH:
            raise YamlProblem(line, path, f"nested deeper than {_MAX_DEPTH} levels")
        if id(node) in self._stack:
            raise YamlProblem(line, path, "recursive alias")
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path, line)
        self._stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                if node.tag not in ("tag:yaml.org,2002:seq",):
                    raise YamlProblem(line, path, f"unsupported tag {node.tag}")
                return [
                    self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)
                ]
            if isinstance(node, yaml.MappingNode):
                if node.tag not in ("tag:yaml.org,2002:map",):
                    raise YamlProblem(line, path, f"unsupported tag {node.tag}")
                return self._mapping(node, path, depth)
        finally:
            self._stack.discard(id(node))
        raise YamlProblem(line, path, "unsupported YAML node")  # pragma: no cover

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        key_lines: dict[str, int] = {}
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _MERGE_TAG:
                merged.update(self._merge(value_node, path, depth))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlProblem(line, path, "a mapping key must be a plain string")
            key = self._constructor.construct_scalar(key_node)
            if key_node.tag != _STR_TAG and key_node.style is None:
                resolved = self._resolve(key)
                if resolved not in (_STR_TAG,):
                    raise YamlProblem(line, path, f"a mapping key must be a string, got {key!r}")
            if not isinstance(key, str) or not key:
                raise YamlProblem(line, path, "a mapping key must be a non-empty string")
            if key in result:
                raise YamlProblem(
                    line,
                    (*path, key),
                    f"duplicate key (first defined on line {key_lines[key]})",
                )
            key_lines[key] = line
            self.lines[(*path, key)] = line
            result[key] = self.build(value_node, (*path, key), depth + 1)
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def _merge(self, node: yaml.Node, path: Path, depth: int) -> dict[str, Any]:
        line = node.start_mark.line + 1
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise YamlProblem(line, path, "a merge key '<<' needs a mapping or a list of them")
            value = self.build(source, path, depth + 1)
            for key, item in value.items():
                merged.setdefault(key, item)
        return merged

    def _scalar(self, node: yaml.ScalarNode, path: Path, line: int) -> Any:
        tag = node.tag
        if tag not in _SCALAR_TAGS:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise YamlProblem(line, path, f"unsupported tag {shown}")
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise YamlProblem(line, path, _describe(exc)) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise YamlProblem(line, path, f"cannot read value: {exc}") from None
        if isinstance(value, str) and "$" in value:
            interpolated = interpolate(value, self.env, line, path)
            if node.style is None and any(m.group(1) is not None for m in _REF.finditer(value)):
                # A plain scalar: type the interpolated text as YAML would have.
                retyped = yaml.ScalarNode(
                    self._resolve(interpolated),
                    interpolated,
                    node.start_mark,
                    node.end_mark,
                )
                try:
                    return self._constructor.construct_object(retyped, deep=True)
                except (yaml.YAMLError, ValueError, TypeError, OverflowError):
                    return interpolated
            return interpolated
        if not isinstance(value, str | int | float | bool | type(None)):
            # timestamps, binary: keep the source text; the schema decides.
            return str(node.value)
        return value


def load_yaml(
    data: bytes | str, env: Mapping[str, str] | None = None
) -> tuple[Any, dict[Path, int]]:
    """Parse one YAML document into plain values and ``{path: line}``.

    Raises :class:`YamlProblem` for every problem (bad encoding, syntax, tags, several
    documents, recursive aliases, unset variables).
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise YamlProblem(
                data.count(b"\n", 0, exc.start) + 1, (), "not valid UTF-8 text"
            ) from None
    else:
        text = data
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise YamlProblem(_line_of(exc, text), (), f"invalid YAML: {_describe(exc)}") from None
    except RecursionError:
        raise YamlProblem(1, (), "invalid YAML: nested too deeply") from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return None, {}
    if len(nodes) > 1:
        raise YamlProblem(
            nodes[1].start_mark.line + 1, (), "expected one YAML document, found several"
        )
    builder = _Builder(os.environ if env is None else env)
    try:
        value = builder.build(nodes[0], ())
    except RecursionError:
        raise YamlProblem(nodes[0].start_mark.line + 1, (), "nested too deeply") from None
    return value, builder.lines
