"""Keys at the wrong indentation, found from the schema errors they cause.

A key indented one step too far left or right still parses as YAML; it only lands in the
wrong mapping, and the schema then reports what that looks like from there: an unknown key
(with a misleading "did you mean" for some sibling), an entry named like a key (`windows:`
dedented out of its model reads as a model named `windows`, missing `provider` and `model`,
with unknown keys of its own), a block left empty, a required key gone. This module finds
the mapping such a key belongs in and reports it once:

    gateway.yaml:8:3: 'windows' is indented as a key of models; it belongs under models.llama
    (check its indentation)

and names the schema errors that key caused, so that they are not reported as well.

A key is taken for misplaced only when the schema says where it belongs, tried in this order:

- dedented: a mapping still open above it takes it; that is the mapping of the nearest
  sibling above it (skipping keys misplaced themselves), or that mapping's last entry, and so
  on down (YAML closed them all by dedenting);
- indented too far: a mapping that holds the one it landed in takes it.

"Takes it" means the key is one of the mapping's own keys (and not there yet), or, for the
mappings of names (`providers`, `models`, `aliases`), that its value is a valid entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from jsonschema.exceptions import ValidationError

from gatewayd.daemon.config.schemadoc import entry_schema, is_valid, schema_at
from gatewayd.daemon.config.yamldoc import Document


@dataclass(frozen=True, slots=True)
class Misplaced:
    """Keys of the mapping at `where` that belong in the mapping at `home`."""

    where: tuple
    home: tuple
    keys: tuple[str, ...]

    def caused(self, error: ValidationError) -> bool:
        """Whether `error` is only this misplacement seen from the schema's side."""
        path = tuple(error.absolute_path)
        if any(path[:len(self.where) + 1] == self.where + (key,) for key in self.keys):
            return True  # about a misplaced key or anything under it
        if path == self.home and error.validator == "type" and error.instance is None:
            return True  # the block left empty by the keys that should be in it
        return False

    def skipped(self, error: ValidationError) -> frozenset[str]:
        """The keys an unknown-key or missing-key error must leave out: they are reported here."""
        path = tuple(error.absolute_path)
        if path == self.where and error.validator == "additionalProperties":
            return frozenset(self.keys)
        if path == self.home and error.validator == "required":
            return frozenset(self.keys)
        return frozenset()


@dataclass(slots=True)
class Finder:
    """One document's misplaced keys, found key by key in the order of the file."""

    doc: Document
    found: list[Misplaced] = field(default_factory=list)
    stray: set[tuple] = field(default_factory=set)  # paths of keys already taken for misplaced

    def run(self, errors: Iterable[ValidationError]) -> list[Misplaced]:
        for where, key in sorted(set(suspects(self.doc, errors)), key=self.position):
            home = self.home_of(where, key)
            if home is not None:
                self.add(where, key, home)
        return self.found

    def position(self, suspect: tuple[tuple, str]) -> tuple[int, int]:
        mark = self.doc.key_mark(suspect[0] + (suspect[1],))
        return mark.line, mark.column

    def add(self, where: tuple, key: str, home: tuple) -> None:
        self.stray.add(where + (key,))
        last = self.found[-1] if self.found else None
        if last is not None and (last.where, last.home) == (where, home):  # the same block, one more key
            self.found[-1] = Misplaced(where, home, last.keys + (key,))
        else:
            self.found.append(Misplaced(where, home, (key,)))

    def home_of(self, where: tuple, key: str) -> tuple | None:
        value = value_at(self.doc.data, where + (key,))
        # an entry of a mapping of names may be named like a key: taken for one only when its value fits
        strict = entry_schema(schema_at(where)) is not None
        return self.dedented_home(where, key, value, strict) or self.indented_home(where, key, value)

    def dedented_home(self, where: tuple, key: str, value: Any, strict: bool) -> tuple | None:
        """A mapping still open above `key` that takes it: down the last entries from its sibling."""
        siblings = list(value_at(self.doc.data, where))
        above = [name for name in siblings[:siblings.index(key)] if where + (name,) not in self.stray]
        if not above:
            return None
        path = where + (above[-1],)
        while True:
            node = value_at(self.doc.data, path)
            if (node is None or isinstance(node, dict)) and takes(path, node, key, value, strict):
                return path
            if isinstance(node, dict) and node:
                path += (list(node)[-1],)
            elif isinstance(node, list) and node:
                path += (len(node) - 1,)
            else:
                return None

    def indented_home(self, where: tuple, key: str, value: Any) -> tuple | None:
        """A mapping holding the one `key` landed in that takes it."""
        for depth in range(len(where) - 1, -1, -1):
            path = where[:depth]
            node = value_at(self.doc.data, path)
            if isinstance(node, dict) and takes(path, node, key, value):
                return path
        return None


def find_misplaced(doc: Document, errors: Iterable[ValidationError]) -> list[Misplaced]:
    return Finder(doc).run(errors)


def suspects(doc: Document, errors: Iterable[ValidationError]) -> Iterable[tuple[tuple, str]]:
    """(mapping path, key) of each key an error makes look out of place: an unknown key, or an
    entry of a mapping of names that is not a valid entry."""
    for error in errors:
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = schema_at(path).get("properties", {})
            yield from ((path, key) for key in error.instance if key not in known)
        for depth in range(len(path)):
            if isinstance(path[depth], str) and entry_schema(schema_at(path[:depth])) is not None:
                yield path[:depth], path[depth]
                break


def takes(path: tuple, node: dict | None, key: str, value: Any, strict: bool = False) -> bool:
    """Whether the mapping at `path` (its value `node`; None when left empty) takes `key: value`;
    `strict`: only a valid value."""
    if node is not None and key in node:
        return False
    node_schema = schema_at(path)
    if key in node_schema.get("properties", {}):
        return not strict or is_valid(node_schema["properties"][key], value)
    entry = entry_schema(node_schema)
    return entry is not None and is_valid(entry, value) and is_valid(node_schema.get("propertyNames", {}), key)


def value_at(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data
