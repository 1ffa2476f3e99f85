"""Reading one configuration file as YAML, safely and with the line of every key.

`yaml.safe_load` is safe against code execution but not against the document itself: aliases
may expand a small file into a billion nodes (only the copying after loading pays for it), a
self-referencing anchor builds a cycle, duplicate keys are silently resolved last-one-wins, and
a long integer, a bad date or a byte that is not UTF-8 raise plain Python errors. Here the
document is composed into nodes first, and the node graph is inspected before any value is
built: every problem is refused with its key path and line, in time linear in the file's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_INT_CHARS",
    "MAX_NODES",
    "YamlDocument",
    "YamlProblem",
    "read_yaml",
]

MAX_DEPTH = 64  # nesting levels; a real configuration needs about 10
MAX_NODES = 200_000  # values once aliases are expanded: seconds of validation, not minutes
MAX_INT_CHARS = 100  # a 64-bit integer has 20 digits
MAX_FILE_BYTES = 16 * 2**20  # far above any real configuration, far below the memory

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_INT = "tag:yaml.org,2002:int"
_CHECKED_SCALARS = frozenset({_INT, "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"})

Path_ = tuple[str, ...]


class YamlProblem(Exception):
    """The file cannot be taken as a configuration; `path` and `line` say where."""

    def __init__(self, reason: str, path: Path_ = (), line: int | None = None) -> None:
        self.reason = reason
        self.path = path
        self.line = line
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """The values of one file and the line (1-based) where each key path is written.

    A key reached through an alias has the alias's line; keys inside the anchored value are
    not listed again under it, so a lookup falls back to the alias.
    """

    data: dict[str, Any]
    lines: dict[Path_, int]


class _Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting while composing (the composer recurses per level)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._where: list[str] = []
        # an alias is composed into the node it names, which keeps the anchor's position
        self.alias_lines: dict[tuple[int, int], int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        label = index.value if isinstance(index, ScalarNode) else index
        self._where.append("" if label is None else str(label))
        try:
            if len(self._where) > MAX_DEPTH + 1:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                path = tuple(p for p in self._where[1:] if p)
                msg = f"nested deeper than {MAX_DEPTH} levels"
                raise YamlProblem(msg, path, mark.line + 1)
            if isinstance(index, int) and self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                self.alias_lines[(id(parent), index)] = mark.line + 1
            return super().compose_node(parent, index)
        finally:
            self._where.pop()


def read_yaml(file: Path) -> YamlDocument:
    """The configuration mapping of `file` with the line of every key.

    Raises:
        YamlProblem: the file cannot be read, is not YAML, or is not a plain, bounded mapping.
    """
    try:
        with file.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)  # bounded: `-c /dev/zero` must end too
    except OSError as exc:
        raise YamlProblem(f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise YamlProblem(f"larger than {MAX_FILE_BYTES // 2**20} MiB: not a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(raw, exc) from None
    root, loader = _compose(text)
    try:
        if root is None:
            return YamlDocument({}, {})
        if not isinstance(root, MappingNode):
            msg = f"the top level must be a mapping of sections, not {_kind(root)}"
            raise YamlProblem(msg, (), root.start_mark.line + 1)
        lines = _Inspector(loader).run(root)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, text) from None
    finally:
        loader.dispose()
    return YamlDocument(data, lines)


def _compose(text: str) -> tuple[Node | None, _Loader]:
    try:
        loader = _Loader(text)  # checks every character first
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, text) from None
    try:
        return loader.get_single_node(), loader
    except yaml.YAMLError as exc:
        loader.dispose()
        raise _yaml_problem(exc, text) from None
    except YamlProblem:
        loader.dispose()
        raise


def _yaml_problem(exc: yaml.YAMLError, text: str) -> YamlProblem:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        what = ", ".join(p for p in (exc.context, exc.problem) if p)
        mark = exc.problem_mark
        return YamlProblem(f"not valid YAML: {what} (column {mark.column + 1})", (), mark.line + 1)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        what = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        return YamlProblem(f"not valid YAML: character {what} is not allowed", (), line)
    return YamlProblem(f"not valid YAML: {exc}")


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> YamlProblem:
    """Name the line, column and (when the rest parses) the key of the first bad byte."""
    before = raw[: exc.start].decode("utf-8")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    reason = (
        f"byte 0x{raw[exc.start]:02x} at column {column} is not UTF-8 "
        "(the configuration must be saved as UTF-8)"
    )
    path: Path_ = ()
    try:
        root, loader = _compose(raw.decode("utf-8", errors="replace"))
    except YamlProblem:
        return YamlProblem(reason, path, line)  # the key stays unknown; the line is enough
    try:
        if root is not None:
            path = _path_at(root, len(before))
    finally:
        loader.dispose()
    return YamlProblem(reason, path, line)


def _path_at(node: Node, index: int) -> Path_:
    """The key path of the innermost value written across character `index`."""
    if isinstance(node, MappingNode):
        for key, value in node.value:
            for part in (key, value):
                if part.start_mark.index <= index < part.end_mark.index:
                    label = str(key.value) if isinstance(key, ScalarNode) else "?"
                    if part is key:
                        return (label,)
                    return (label, *_path_at(value, index))
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            if item.start_mark.index <= index < item.end_mark.index:
                return (str(i), *_path_at(item, index))
    return ()


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    return f"the value {node.value!r}" if isinstance(node, ScalarNode) else "this"


class _Inspector:
    """One walk over the node graph: keys, sizes, nesting, cycles and scalars, before building.

    Each node is inspected once; a node met again was reached through an alias and only its
    memoised expanded size and height are added, so the walk is linear in the file while the
    bounds hold for the document as expanded.
    """

    def __init__(self, loader: _Loader) -> None:
        self._loader = loader
        self._size: dict[int, int] = {}
        self._height: dict[int, int] = {}
        self._open: set[int] = set()
        self._total = 0
        self.lines: dict[Path_, int] = {}

    def run(self, root: MappingNode) -> dict[Path_, int]:
        self._visit(root, (), 0, root.start_mark.line + 1)
        return self.lines

    def _visit(self, node: Node, path: Path_, depth: int, line: int) -> None:
        key = id(node)
        if key in self._open:
            msg = "an alias refers to a value that contains it (a recursive structure)"
            raise YamlProblem(msg, path, line)
        if key in self._size:  # reached again through an alias
            self._count(self._size[key], path, line)
            if depth + self._height[key] > MAX_DEPTH:
                msg = f"an alias nests the document deeper than {MAX_DEPTH} levels"
                raise YamlProblem(msg, path, line)
            return
        self._count(1, path, line)
        if node.tag not in type(self._loader).yaml_constructors:
            raise YamlProblem(f"unsupported tag {node.tag}", path, line)
        self._open.add(key)
        size, height = 1, 0
        for child_path, child, child_line in self._children(node, path):
            self._visit(child, child_path, depth + 1, child_line)
            size += self._size[id(child)]
            height = max(height, self._height[id(child)])
        self._open.discard(key)
        self._size[key] = size
        self._height[key] = height + 1
        if isinstance(node, ScalarNode):
            self._scalar(node, path, line)

    def _count(self, values: int, path: Path_, line: int) -> None:
        self._total += values
        if self._total > MAX_NODES:
            how = "through aliases, " if values > 1 else ""
            msg = f"{how}the document grows past {MAX_NODES:,} values (the most it may hold)"
            raise YamlProblem(msg, path, line)

    def _children(self, node: Node, path: Path_) -> list[tuple[Path_, Node, int]]:
        out: list[tuple[Path_, Node, int]] = []
        if isinstance(node, MappingNode):
            first: dict[str, int] = {}
            for key_node, value in node.value:
                name = self._key(key_node, path)
                line = key_node.start_mark.line + 1
                if name in first and key_node.tag != _MERGE:
                    msg = f"duplicate key (first at line {first[name]}): the second would win"
                    raise YamlProblem(msg, (*path, name), line)
                first[name] = line
                self.lines.setdefault((*path, name), line)
                out.append(((*path, name), value, line))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                line = self._loader.alias_lines.get((id(node), i), item.start_mark.line + 1)
                self.lines.setdefault((*path, str(i)), line)
                out.append(((*path, str(i)), item, line))
        return out

    def _key(self, node: Node, path: Path_) -> str:
        line = node.start_mark.line + 1
        if node.tag == _MERGE:
            return "<<"
        if not isinstance(node, ScalarNode):
            raise YamlProblem("a key must be a name, not a list or a mapping", path, line)
        if node.tag != _STR:
            kind = node.tag.rsplit(":", 1)[-1]
            msg = f"key {node.value!r} is read as {kind}: a key must be a name (quote it)"
            raise YamlProblem(msg, (*path, str(node.value)), line)
        return str(node.value)

    def _scalar(self, node: ScalarNode, path: Path_, line: int) -> None:
        if node.tag not in _CHECKED_SCALARS:
            return
        if node.tag == _INT and len(node.value) > MAX_INT_CHARS:
            msg = f"an integer of {len(node.value):,} characters is out of range"
            raise YamlProblem(msg, path, line)
        try:
            type(self._loader).yaml_constructors[node.tag](self._loader, node)
        except (ValueError, OverflowError) as exc:
            msg = f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}: {exc}"
            raise YamlProblem(msg, path, line) from None
