"""Loading a config file into a graph: read, parse, validate, resolve secrets, compile.

This is the only stage with I/O (the file, the environment, secret files);
`compile_graph` after it is pure. Every failure comes out as one
`ConfigError` listing all problems found, each `FILE:LINE:COL: message`:
schema errors do not hide what the compiler finds in the parts the schema
accepted, nor does a secret file that cannot be read hide the compiler's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from gatewayd.daemon.config.compile import compile_graph, secret_name
from gatewayd.daemon.config.validate import validate
from gatewayd.daemon.config.validpart import STAND_IN, valid_part
from gatewayd.daemon.config.yamldoc import Document, load_document
from gatewayd.daemon.core.graph import Graph
from gatewayd.daemon.core.problems import ConfigError, Problem

DEFAULT_PATHS = ("gateway.yaml", "/etc/gatewayd/gateway.yaml")


@dataclass(frozen=True, slots=True)
class Loaded:
    graph: Graph
    document: Document


def find_config(explicit: str | None) -> str:
    """The -c FILE, else ./gateway.yaml, else /etc/gatewayd/gateway.yaml."""
    if explicit:
        return explicit
    for candidate in DEFAULT_PATHS:
        if Path(candidate).exists():
            return candidate
    raise ConfigError([Problem(DEFAULT_PATHS[0], 1, 1,
                               "no config file: pass -c FILE, or create ./gateway.yaml or "
                               "/etc/gatewayd/gateway.yaml")])


def read_secrets(document: Document, env: Mapping[str, str]) -> dict[str, str]:
    """Read every provider's secret files (`secret_files` says where each is)."""
    secrets: dict[str, str] = {}
    problems: list[Problem] = []
    for secret, path in secret_files(document.data, document.path, env).items():
        name, _, key = secret.partition("#")
        where = ("providers", name, f"{key or 'api_key'}_file")
        try:
            secrets[secret] = path.read_text("utf-8").rstrip("\r\n")
        except FileNotFoundError:
            problems.append(located(document, where, f"secret file {path} for provider '{name}' does not exist"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "it is not UTF-8 text"
            problems.append(located(document, where,
                                    f"cannot read secret file {path} for provider '{name}': {reason}"))
    if problems:
        raise ConfigError(problems)
    return secrets


def secret_files(data: object, config_path: str, env: Mapping[str, str]) -> dict[str, Path]:
    """Each provider's secret files (api_key_file, and its type's own KEY_file), by the name the
    compiler knows its content by (compile.secret_name): a relative path resolves against
    $CREDENTIALS_DIRECTORY (systemd LoadCredential=) when set, else the config's folder."""
    providers = data.get("providers") if isinstance(data, dict) else None
    if not isinstance(providers, dict):
        return {}
    base = env.get("CREDENTIALS_DIRECTORY") or str(Path(config_path).resolve().parent)
    return {secret_name(name, key.removesuffix("_file")): Path(base, value)  # an absolute path wins over base
            for name, raw in providers.items() if isinstance(raw, dict)
            for key, value in raw.items() if key.endswith("_file") and isinstance(value, str)}


def located(document: Document, path: tuple, message: str) -> Problem:
    mark = document.mark(path)
    return Problem(document.path, mark.line, mark.column, message)


def load(path: str, env: Mapping[str, str] | None = None) -> Loaded:
    """Load and compile `path`; raises ConfigError with every problem found."""
    env = os.environ if env is None else env
    document = load_document(path, env)
    problems = validate(document)
    if problems:
        # the parts the schema accepted are compiled too (daemon/config/validpart.py): every error at once
        valid = valid_part(document)
        beyond = compiled(valid, env)[1] if valid is not None else []
        raise ConfigError(in_order(problems + [p for p in beyond if STAND_IN not in p.message]))
    graph, problems = compiled(document, env)
    if graph is None:
        raise ConfigError(in_order(problems))
    return Loaded(graph, document)


def compiled(document: Document, env: Mapping[str, str]) -> tuple[Graph | None, list[Problem]]:
    """Read the secret files and compile: the graph, or None and what both found wrong (a
    secret file that cannot be read leaves its provider disabled for the compiler)."""
    problems: list[Problem] = []
    try:
        secrets = read_secrets(document, env)
    except ConfigError as error:
        problems.extend(error.problems)
        secrets = {}
    try:
        graph = compile_graph(document, secrets)
    except ConfigError as error:
        return None, problems + list(error.problems)
    return (None if problems else graph), problems


def in_order(problems: list[Problem]) -> list[Problem]:
    unique = {(p.line, p.column, p.message): p for p in problems}
    return sorted(unique.values(), key=lambda p: (p.line, p.column))
