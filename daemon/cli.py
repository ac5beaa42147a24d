"""The `gatewayd` command: run, check (--diff), explain, reload, requests, schema, hash-key, --version."""

from __future__ import annotations

import argparse
import hashlib
import sys

from gatewayd.daemon.config.diff import describe as describe_diff
from gatewayd.daemon.config.diff import diff_documents
from gatewayd.daemon.config.load import find_config, load
from gatewayd.daemon.core.problems import ConfigError
from gatewayd.daemon.routing.explain import UnknownRoute, explain_plan, format_plan, parse_instant
from gatewayd.daemon.runfile import gatewayd_version


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gatewayd", description="A local LLM gateway daemon.")
    top.add_argument("--version", action="version", version=f"gatewayd {gatewayd_version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("-c", "--config", metavar="FILE",
                         help="config file (default: ./gateway.yaml, then /etc/gatewayd/gateway.yaml)")
        return sub

    run = with_config("run", "serve the OpenAI-compatible API")
    # how the supervisor of several workers starts each of them (daemon/supervisor.py); not for people
    run.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    check = with_config("check", "validate and compile the config; exit 0 ok, 1 errors")
    check.add_argument("--diff", metavar="OTHER", help="check OTHER too, and print what changes from the config "
                       "to OTHER (as a reload to it would report)")
    explain = with_config("explain", "the plan for ALIAS and why each candidate is in or out")
    explain.add_argument("alias", metavar="ALIAS")
    explain.add_argument("--at", metavar="ISO8601", help="the instant to evaluate (default: now)")
    with_config("reload", "ask the running daemon to reload and wait; exit 1 if rejected")
    requests = with_config("requests", "what a recent request did (every attempt, and why the next one), "
                           "or the latest requests")
    requests.add_argument("id", metavar="ID", nargs="?", help="a request's x-request-id (default: list the latest)")
    requests.add_argument("--limit", type=int, default=20, help="how many of the latest to list (default 20)")
    requests.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    commands.add_parser("schema", help="print the JSON Schema of the config")
    commands.add_parser("hash-key", help="read an app key on stdin, print the key_sha256 line for the config",
                        description="Read an app key on stdin (one trailing newline is dropped) and print "
                        "the 'key_sha256: HEX' line to put in its server.auth.keys entry instead of 'key:'.")
    return top


def report(error: ConfigError) -> int:
    for problem in error.problems:
        print(f"error: {problem}", file=sys.stderr)
    count = len(error.problems)
    print(f"{count} error{'s' if count != 1 else ''}; the config was not loaded", file=sys.stderr)
    return 1


def cmd_check(args: argparse.Namespace) -> int:
    try:
        paths = [find_config(args.config)] + ([args.diff] if args.diff else [])
    except ConfigError as error:
        return report(error)
    documents = []
    for path in paths:  # with --diff, the other file is checked as well: a change is reviewed whole
        try:
            loaded = load(path)
        except ConfigError as error:
            return report(error)
        graph = loaded.graph
        for warning in graph.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{graph.source}: ok (config {graph.version}: {len(graph.providers)} providers, "
              f"{len(graph.deployments)} models, {len(graph.aliases)} aliases, "
              f"{len(graph.warnings)} warnings)")
        documents.append(loaded.document.data)
    if args.diff:
        print(f"from {paths[0]} to {paths[1]}:")
        for line in describe_diff(diff_documents(documents[0], documents[1])):
            print(f"  {line}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        at = parse_instant(args.at)
    except ValueError:
        print(f"error: --at {args.at!r} is not an ISO 8601 instant (e.g. 2026-11-22T21:30:00+01:00)",
              file=sys.stderr)
        return 2
    try:
        loaded = load(find_config(args.config))
    except ConfigError as error:
        return report(error)
    try:
        print(format_plan(explain_plan(loaded.graph, args.alias, at)))
    except UnknownRoute as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from gatewayd.daemon.config.schemadoc import schema_text

    sys.stdout.write(schema_text())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gatewayd.daemon.server import run

    return run(args.config, args.control_fd)


def cmd_reload(args: argparse.Namespace) -> int:
    from gatewayd.daemon.reload_client import reload_running

    return reload_running(args.config)


def cmd_requests(args: argparse.Namespace) -> int:
    from gatewayd.daemon.requests_client import show_requests

    return show_requests(args.config, args.id, args.limit, args.json)


def cmd_hash_key(args: argparse.Namespace) -> int:
    key = sys.stdin.buffer.read()
    key = key[:-2] if key.endswith(b"\r\n") else key.removesuffix(b"\n")  # what `echo KEY |` adds
    if not key:
        print("error: no key on stdin: pipe one in, e.g. printf %s \"$KEY\" | gatewayd hash-key", file=sys.stderr)
        return 2
    print(f"key_sha256: {hashlib.sha256(key).hexdigest()}")
    return 0


COMMANDS = {"check": cmd_check, "explain": cmd_explain, "schema": cmd_schema,
            "run": cmd_run, "reload": cmd_reload, "requests": cmd_requests, "hash-key": cmd_hash_key}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
