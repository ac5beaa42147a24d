"""What changed between two configs: the providers, models and aliases added, removed and
changed (with the paths of the changed keys), and the other settings' changed paths.

Only names and paths, never a value: a value may be a credential (an `api_key` read from
the environment is in the document as its value), so a diff is safe to log, to send on
/admin/events and to print.
"""

from __future__ import annotations

from typing import Any, Mapping

SECTIONS = ("providers", "models", "aliases")


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths of the leaves that differ between `old` and `new` (a list is one leaf:
    targets in another order are another plan)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        paths = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                paths.append(path)
            else:
                paths.extend(changed_paths(old[key], new[key], path))
        return paths
    return [] if old == new else [prefix]


def diff_documents(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict:
    """`{"providers"|"models"|"aliases": {"added": [...], "removed": [...], "changed": {name:
    [paths]}}, "other": [paths]}`; every list sorted."""
    old, new = old or {}, new or {}
    result: dict[str, Any] = {}
    for section in SECTIONS:
        before, after = old.get(section) or {}, new.get(section) or {}
        result[section] = {
            "added": sorted(name for name in after if name not in before),
            "removed": sorted(name for name in before if name not in after),
            "changed": {name: paths for name in sorted(set(before) & set(after))
                        if (paths := changed_paths(before[name], after[name]))},
        }
    rest_old = {key: value for key, value in old.items() if key not in SECTIONS}
    rest_new = {key: value for key, value in new.items() if key not in SECTIONS}
    result["other"] = changed_paths(rest_old, rest_new)
    return result


def is_empty(diff: Mapping[str, Any]) -> bool:
    return not diff["other"] and not any(diff[section][kind] for section in SECTIONS
                                         for kind in ("added", "removed", "changed"))


def of_reload(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict:
    """A reload's diff: as `diff_documents`, with `secret_files` true when the documents are the
    same (the new version came from a secret file's content, which no document holds)."""
    diff = diff_documents(old, new)
    diff["secret_files"] = is_empty(diff)
    return diff


def describe(diff: Mapping[str, Any]) -> list[str]:
    """The diff as lines for a person: `models: + gpt-5; - gpt-4; ~ claude (retry.attempts)`."""
    lines = []
    for section in SECTIONS:
        part = diff[section]
        words = [f"+ {name}" for name in part["added"]] + [f"- {name}" for name in part["removed"]]
        words += [f"~ {name} ({', '.join(paths)})" for name, paths in part["changed"].items()]
        if words:
            lines.append(f"{section}: " + "; ".join(words))
    if diff["other"]:
        lines.append("other: " + ", ".join(diff["other"]))
    if diff.get("secret_files"):
        lines.append("secret files: a file's content changed (api_key_file and the like)")
    return lines or ["no change to providers, models, aliases or other settings"]
