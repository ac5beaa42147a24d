"""Safe YAML loading that remembers where every value came from.

`load_document` turns the config file into plain Python data (dict, list, str,
int, float, bool, None) plus a map from JSON paths to file positions, so every
later stage can point its errors at the exact line and column.  `${VAR}` and
`${VAR:-default}` in string values are replaced from the environment here, and
every variable looked at is recorded so a reload can notice when one changes.

We do not use `yaml.safe_load`: it forgets positions, silently keeps the last
of two duplicate keys, and its recursive composer dies with RecursionError (or
worse, in the C extension) on deeply nested input.  Instead we read the flat
event stream from PyYAML's parser and build values with an explicit stack, so
depth, size, tags, aliases and keys are all checked in one iterative pass.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from gatewayd.daemon.core.problems import ConfigError, Problem, quoted

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 100_000

# The C parser is much faster and yields the same marks; its error wording is
# worse, so syntax errors are re-read with the pure-Python parser (see below).
_Loader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader

_T = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_T + s for s in ("str", "int", "float", "bool", "null"))
_SEQ, _MAP, _MERGE = _T + "seq", _T + "map", _T + "merge"
_TYPED = {_INT: "construct_yaml_int", _FLOAT: "construct_yaml_float",
          _BOOL: "construct_yaml_bool", _NULL: "construct_yaml_null"}
# Both are stateless for scalars, so one shared instance is thread-safe.
_RESOLVER = Resolver()
_CONSTRUCTOR = SafeConstructor()
# What PyYAML's reader rejects; checked up front so we can locate it ourselves.
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_REF = re.compile(
    r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>[^}]*\}?))"
)


@dataclass(frozen=True, slots=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


_START = Mark(1, 1)


@dataclass(frozen=True)
class Document:
    path: str
    data: Any
    value_marks: Mapping[tuple, Mark]
    key_marks: Mapping[tuple, Mark]
    env_refs: Mapping[str, str | None]

    def mark(self, path) -> Mark:
        """Where the value at `path` starts; else its nearest located ancestor."""
        path = tuple(path)
        while path not in self.value_marks:
            if not path:
                return _START
            path = path[:-1]
        return self.value_marks[path]

    def key_mark(self, path) -> Mark:
        """Where the key of the mapping entry at `path` starts; else `mark(path)`."""
        return self.key_marks.get(tuple(path)) or self.mark(path)


def load_document(path: str, env: Mapping[str, str]) -> Document:
    """Read and parse the config file at `path`; raises ConfigError."""
    try:
        with open(path, "rb") as f:
            # Never read more than the limit (plus one byte to notice overflow).
            raw = f.read(MAX_BYTES + 1)
            size = max(len(raw), os.fstat(f.fileno()).st_size)
    except OSError as e:
        raise ConfigError([Problem(path, 1, 1, f"cannot read the file: {e.strerror or e}")]) from None
    if size > MAX_BYTES:
        raise ConfigError([_too_big(path, size)])
    return parse_document(raw, path, env)


def parse_document(text_bytes: bytes, path: str, env: Mapping[str, str]) -> Document:
    """Parse config bytes as if read from `path`; raises ConfigError."""
    if len(text_bytes) > MAX_BYTES:
        raise ConfigError([_too_big(path, len(text_bytes))])
    text = _decode(text_bytes, path)
    bad = _NON_PRINTABLE.search(text)
    if bad:
        at = bad.start()
        line, col = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
        msg = f"control character U+{ord(bad.group()):04X} is not allowed in YAML text"
        raise ConfigError([Problem(path, line, col, msg)])
    return _Builder(path, env).build(text)


def _too_big(path: str, size: int) -> Problem:
    return Problem(path, 1, 1, f"file is {size / MAX_BYTES:.1f} MiB; the limit is 1 MiB")


def _decode(raw: bytes, path: str) -> str:
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # editors may add a BOM; it is not content
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        col = len(raw[line_start:e.start].decode("utf-8", "replace")) + 1
        msg = f"file is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at line {line}, column {col})"
        raise ConfigError([Problem(path, line, col, msg)]) from None


class _Stop(Exception):
    """Raised inside the builder when going on would be pointless or unsafe."""


class _Frame:
    """A list or mapping still being read.  For mappings, `key` is the key awaiting
    its value (None while expecting a key) and `seen` maps keys to their first line."""

    __slots__ = ("anchor", "count", "key", "key_ok", "mark", "path", "rec", "seen", "value")

    def __init__(self, value, path, mark, anchor, rec, count):
        self.value, self.path, self.mark, self.anchor, self.rec, self.count = (
            value, path, mark, anchor, rec, count)
        self.key, self.key_ok, self.seen = None, False, {}


class _Builder:
    """Builds plain values from parser events with an explicit stack (no recursion)."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.file, self.env = path, env
        self.problems: list[Problem] = []
        self.env_refs: dict[str, str | None] = {}
        # (is_key, json path, mark) in document order; an anchor's marks are a slice of it.
        self.records: list[tuple[bool, tuple, Mark]] = []
        self.anchors: dict[str, tuple[Any, list, int]] = {}  # name -> value, marks, node count
        self.pending: set[str] = set()  # anchors whose node is still open
        self.stack: list[_Frame] = []
        self.count = 0
        self.root: tuple | None = None  # (value, mark, scalar text) once read

    def problem(self, mark: Mark, message: str) -> None:
        self.problems.append(Problem(self.file, mark.line, mark.column, message))

    def build(self, text: str, loader_class: type | None = None) -> Document:
        loader_class = loader_class or _Loader
        loader, docs = loader_class(text), 0
        try:
            while not loader.check_event(yaml.StreamEndEvent):
                ev = loader.get_event()
                if isinstance(ev, yaml.DocumentStartEvent) and (docs := docs + 1) > 1:
                    self.problem(_mark(ev.start_mark), "only one YAML document is allowed per file")
                    raise _Stop
                if isinstance(ev, yaml.NodeEvent | yaml.CollectionEndEvent):
                    self.event(ev)
            self.check_root()
        except yaml.MarkedYAMLError as e:
            if loader_class is not yaml.SafeLoader:
                # Read it again with the pure-Python parser: its messages are clearer, and it
                # reports the first problem in document order, where libyaml's scanner reads far
                # ahead (it refuses 1,000 open brackets before this builder sees the 65th).
                return _Builder(self.file, self.env).build(text, yaml.SafeLoader)
            self.syntax_problem(e, text)
        except yaml.YAMLError as e:
            self.problem(_START, f"invalid YAML: {e}")
        except _Stop:
            pass
        finally:
            loader.dispose()
        if self.problems:
            raise ConfigError(sorted(self.problems, key=lambda p: (p.line, p.column)))
        values = {p: m for is_key, p, m in self.records if not is_key}
        keys = {p: m for is_key, p, m in self.records if is_key}
        return Document(self.file, self.root[0], MappingProxyType(values), MappingProxyType(keys),
                        MappingProxyType(self.env_refs))

    def check_root(self) -> None:
        if self.root is None or self.root[0] is None and self.root[2] == "":
            self.problem(_START, "the file is empty; it needs at least 'version: 1'")
        elif not isinstance(self.root[0], dict):
            self.problem(self.root[1], "the top level must be a mapping of keys (version, server, "
                         f"providers, ...), found {_kind(self.root[0])}")

    def syntax_problem(self, e: yaml.MarkedYAMLError, text: str) -> None:
        where, msg = e.problem_mark or e.context_mark, f"invalid YAML: {e.problem or e.context}"
        if e.problem and e.context and e.context_mark:
            cm = _mark(e.context_mark)
            msg += f" ({e.context} at line {cm.line}, column {cm.column})"
        if where is not None:
            msg += _indentation_hint(text.split("\n"), where.line, where.column)
        self.problem(_mark(where) if where else _START, msg)

    def event(self, ev) -> None:
        if isinstance(ev, yaml.CollectionEndEvent):
            frame = self.stack.pop()
            self.finish(frame.anchor, frame.value, frame.rec, frame.count)
            return self.deliver(frame.value, frame.mark, None, None)
        mark, parent = _mark(ev.start_mark), self.stack[-1] if self.stack else None
        in_key = parent is not None and isinstance(parent.value, dict) and parent.key is None
        # Keys, and anything under a rejected key, have no JSON path: path None.
        if parent is None:
            path = ()
        elif parent.path is None or in_key:
            path = None
        elif isinstance(parent.value, list):
            path = (*parent.path, len(parent.value))
        else:
            path = (*parent.path, parent.key) if parent.key_ok else None
        if isinstance(ev, yaml.AliasEvent):
            return self.alias(ev.anchor, mark, path)
        self.count += 1
        if self.count > MAX_NODES:
            self.problem(mark, f"the document has more than {MAX_NODES} values")
            raise _Stop
        rec = len(self.records)  # where this node's marks begin, for anchors
        if path is not None:
            self.records.append((False, path, mark))
        if isinstance(ev, yaml.ScalarEvent):
            value, tag = self.scalar(ev, mark, in_key)
            self.finish(ev.anchor, value, rec, self.count - 1)
            return self.deliver(value, mark, ev.value, tag)
        if len(self.stack) >= MAX_DEPTH:
            self.problem(mark, f"nested too deeply (more than {MAX_DEPTH} levels)")
            raise _Stop
        is_map = isinstance(ev, yaml.MappingStartEvent)
        if ev.tag not in (None, "!", _MAP if is_map else _SEQ):
            self.problem(mark, _tag_message(ev.tag, "a mapping" if is_map else "a list"))
        if ev.anchor:
            self.pending.add(ev.anchor)
        self.stack.append(_Frame({} if is_map else [], path, mark, ev.anchor, rec, self.count - 1))

    def scalar(self, ev, mark: Mark, in_key: bool) -> tuple[Any, str]:
        tag = ev.tag
        if tag is None or tag == "!":  # untagged: resolve like safe_load does
            tag = _RESOLVER.resolve(ScalarNode, ev.value, ev.implicit)
            if tag not in _TYPED and tag != _MERGE:
                tag = _STR  # implicit timestamps and the like stay the text that was written
        elif tag not in _TYPED and tag != _STR:
            self.problem(mark, _tag_message(tag, "a scalar"))
            return ev.value, _STR
        if tag in _TYPED:
            node = ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style)
            try:
                value = getattr(_CONSTRUCTOR, _TYPED[tag])(node)
            except (ValueError, KeyError, TypeError):
                self.problem(mark, f"{quoted(ev.value)} cannot be read as {_show_tag(tag)}")
                return ev.value, _STR
            if isinstance(value, float) and not math.isfinite(value):
                # .nan/.inf would slip through every numeric check downstream
                self.problem(mark, f"'{ev.value}' is not a finite number")
                return ev.value, _STR
            return value, tag
        return (ev.value if in_key or tag != _STR else self.interpolate(ev.value, mark)), tag

    def alias(self, name: str, mark: Mark, path: tuple | None) -> None:
        if name not in self.anchors:
            where = "inside its own anchor" if name in self.pending else "before any anchor"
            self.problem(mark, f"alias '*{name}' is used {where} '&{name}'")
            return self.deliver(None, mark, "", None)
        value, rel, count = self.anchors[name]
        self.count += count
        if self.count > MAX_NODES:
            self.problem(mark, f"alias '*{name}' expands the document past {MAX_NODES} values")
            raise _Stop
        if path is not None:
            # The alias itself is located where it is used, its insides at the anchor.
            self.records.append((False, path, mark))
            self.records.extend((k, path + p, m) for k, p, m in rel if p)
        # A copy, so that later mutation of one use cannot change another.
        self.deliver(copy.deepcopy(value), mark, str(value), None)

    def finish(self, anchor: str | None, value: Any, rec: int, count: int) -> None:
        """Remember an anchored node: its value, its marks relative to it, its size."""
        if anchor:
            self.pending.discard(anchor)
            base = len(self.records[rec][1]) if rec < len(self.records) else 0
            rel = [(k, p[base:], m) for k, p, m in self.records[rec:]]
            self.anchors[anchor] = (value, rel, self.count - count)

    def deliver(self, value: Any, mark: Mark, text: str | None, tag: str | None) -> None:
        """Hand a finished node to the collection (or document) that contains it."""
        if not self.stack:
            self.root = (value, mark, text)
            return
        parent = self.stack[-1]
        if isinstance(parent.value, list):
            parent.value.append(value)
        elif parent.key is None:
            parent.key_ok = self.check_key(parent, value, mark, text, tag)
            parent.key = value if parent.key_ok else ...  # any non-None placeholder
        else:
            if parent.key_ok:
                parent.value[parent.key] = value
            parent.key = None

    def check_key(self, parent: _Frame, key: Any, mark: Mark, text, tag) -> bool:
        if tag == _MERGE:
            self.problem(mark, "merge keys ('<<') are not supported; write the keys out")
        elif isinstance(key, bool):
            self.problem(mark, f"key '{text}' is read by YAML as a boolean; quote it")
        elif not isinstance(key, str):
            found = _kind(key) if isinstance(key, dict | list) else (text or "an empty key")
            self.problem(mark, f"keys must be strings, found {found}")
        elif key in parent.seen:
            self.problem(mark, f"duplicate key '{key}' (first at line {parent.seen[key]})")
        else:
            parent.seen[key] = mark.line
            if parent.path is not None:
                self.records.append((True, (*parent.path, key), mark))
            return True
        return False

    def interpolate(self, s: str, mark: Mark) -> str:
        """Expand the environment references in one string value; problems are located at `mark`."""
        if "$" not in s:
            return s
        text, problems = interpolate(s, self.env, self.env_refs)
        for message in problems:
            self.problem(mark, message)
        return text


def interpolate(s: str, env: Mapping[str, str],
                refs: dict[str, str | None] | None = None) -> tuple[str, list[str]]:
    """Expand ${VAR}, ${VAR:-default} and the $${ escape in one string value.

    Returns the text and the problems found (a malformed reference, an unset variable
    without a default); every variable looked at is recorded in `refs`. The daemon's
    loader and `gatewayd reload` both read values this way, so they agree on them.
    """
    problems: list[str] = []

    def replace(m: re.Match) -> str:
        name, default, bad = m.group("name", "default", "bad")
        if name is None:
            if bad is None:
                return "${"  # the $${ escape
            problems.append(f"malformed environment reference '{('${' + bad)[:40]}' "
                            "(write ${NAME} or ${NAME:-default}; $${ for a literal ${)")
            return ""
        value = env.get(name)
        if refs is not None:
            refs[name] = value
        if default is not None and not value:  # like the shell's ':-': unset or empty
            return default
        if value is None:
            # Name the variable, never a value: values are often secrets.
            problems.append(f"environment variable '{name}' is not set "
                            f"(use ${{{name}:-}} for an optional value)")
            return ""
        return value

    return _REF.sub(replace, s), problems


_KEY_AT_COLON = re.compile(r"( *)([^\s:#]+) *$")  # a line's indentation and a plain key, up to a colon
_KEY_AND_VALUE = re.compile(r"( *)([^\s:#]+): +[^\s#]")  # `key: value`


def _indentation_hint(lines: list[str], line: int, column: int) -> str:
    """A hint for a key indented deeper than the `key: value` line above it, which YAML reads
    as more of that value and then refuses at its colon; "" when the text is not like that."""
    here = _KEY_AT_COLON.fullmatch(lines[line][:column]) if line < len(lines) else None
    above = next((text for text in reversed(lines[:line]) if text.strip() and not text.lstrip().startswith("#")),
                 "")
    before = _KEY_AND_VALUE.match(above)
    if here is None or before is None or len(here.group(1)) <= len(before.group(1)):
        return ""
    return (f" ('{here.group(2)}' is indented deeper than '{before.group(2)}' above it, which has a value:"
            " check its indentation)")


def _mark(m) -> Mark:
    return Mark(m.line + 1, m.column + 1)


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_T):] if tag.startswith(_T) else tag


def _tag_message(tag: str, kind: str) -> str:
    if tag == _STR or tag in _TYPED or tag in (_SEQ, _MAP):
        return f"tag '{_show_tag(tag)}' cannot be used on {kind}"
    return f"tag '{_show_tag(tag)}' is not allowed (gatewayd reads plain YAML only)"


def _kind(value: Any) -> str:
    kinds = ((bool, "a boolean"), (dict, "a mapping"), (list, "a list"), (str, "a string"))
    return next((k for t, k in kinds if isinstance(value, t)), "null" if value is None else "a number")
