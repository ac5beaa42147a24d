"""Tests for daemon/config/yamldoc.py (located YAML loading) and daemon/core/problems.py.

Every problem is asserted with its exact line and column: pointing at the
right spot is the whole point of the module.
"""

from __future__ import annotations

import textwrap

import pytest
import yaml

from gatewayd.daemon.config import yamldoc
from gatewayd.daemon.config.yamldoc import Document, Mark, load_document, parse_document
from gatewayd.daemon.core.problems import ConfigError, Problem, suggest

FILE = "gatewayd.yaml"


def parse(text: str, env: dict | None = None) -> Document:
    return parse_document(textwrap.dedent(text).encode(), FILE, env or {})


def problems(text: str | bytes, env: dict | None = None) -> list[tuple[int, int, str]]:
    raw = text if isinstance(text, bytes) else textwrap.dedent(text).encode()
    with pytest.raises(ConfigError) as info:
        parse_document(raw, FILE, env or {})
    assert all(p.file == FILE for p in info.value.problems)
    return [(p.line, p.column, p.message) for p in info.value.problems]


@pytest.fixture(params=["c", "python"])
def loader(request, monkeypatch):
    """Run a test under both the libyaml and the pure-Python parser."""
    if request.param == "c":
        if not yaml.__with_libyaml__:
            pytest.skip("PyYAML built without libyaml")
        monkeypatch.setattr(yamldoc, "_Loader", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(yamldoc, "_Loader", yaml.SafeLoader)
    return request.param


# -- problems.py -------------------------------------------------------------


def test_problem_formats_and_serialises():
    p = Problem("a.yaml", 3, 7, "bad")
    assert str(p) == "a.yaml:3:7: bad"
    assert p.as_dict() == {"file": "a.yaml", "line": 3, "column": 7, "message": "bad"}


def test_config_error_carries_every_problem():
    ps = [Problem("a.yaml", 1, 1, "one"), Problem("a.yaml", 2, 5, "two")]
    err = ConfigError(iter(ps))
    assert err.problems == tuple(ps)
    assert str(err) == "a.yaml:1:1: one\na.yaml:2:5: two"


def test_suggest():
    assert suggest("provders", ["providers", "server"]) == " (did you mean 'providers'?)"
    assert suggest("zzz", ["providers", "server"]) == ""


# -- values and marks ------------------------------------------------------------


def test_plain_values_and_marks_of_nested_keys_and_list_items(loader):
    doc = parse("""\
        version: 1
        server:
          port: 8080
          debug: off
        providers:
          - name: openai
            models: [gpt-4o, {id: mini, weight: 0.5}]
          - name: local
            base: null
        when: 2024-01-01
        """)
    assert doc.data == {
        "version": 1,
        "server": {"port": 8080, "debug": False},
        "providers": [
            {"name": "openai", "models": ["gpt-4o", {"id": "mini", "weight": 0.5}]},
            {"name": "local", "base": None},
        ],
        "when": "2024-01-01",  # implicit timestamps stay text
    }
    v, k = doc.value_marks, doc.key_marks
    assert v[()] == Mark(1, 1)
    assert (k[("version",)], v[("version",)]) == (Mark(1, 1), Mark(1, 10))
    assert (k[("server",)], v[("server",)]) == (Mark(2, 1), Mark(3, 3))
    assert (k[("server", "port")], v[("server", "port")]) == (Mark(3, 3), Mark(3, 9))
    assert v[("providers",)] == Mark(6, 3)
    assert v[("providers", 0)] == Mark(6, 5)
    assert k[("providers", 0, "name")] == Mark(6, 5)
    assert v[("providers", 0, "name")] == Mark(6, 11)
    assert v[("providers", 0, "models")] == Mark(7, 13)
    assert v[("providers", 0, "models", 0)] == Mark(7, 14)
    assert v[("providers", 0, "models", 1)] == Mark(7, 22)
    assert k[("providers", 0, "models", 1, "weight")] == Mark(7, 33)
    assert v[("providers", 0, "models", 1, "weight")] == Mark(7, 41)
    assert v[("providers", 1)] == Mark(8, 5)
    assert (k[("providers", 1, "base")], v[("providers", 1, "base")]) == (Mark(9, 5), Mark(9, 11))
    assert doc.env_refs == {}


def test_hundred_key_document_marks_are_all_correct(loader):
    # Keys of varying length, half of them one level down, so columns vary.
    names = [f"k{'x' * (i % 5)}{i}" for i in range(100)]
    lines = [f"{n}: v{i}" for i, n in enumerate(names[:50])] + ["nested:"]
    lines += [f"  {n}: [v{i}]" for i, n in enumerate(names[50:], 50)]
    doc = parse_document(("\n".join(lines) + "\n").encode(), FILE, {})
    assert len(doc.data) == 51 and len(doc.data["nested"]) == 50
    for i, name in enumerate(names):
        path = (name,) if i < 50 else ("nested", name)
        line, indent = (i + 1, 1) if i < 50 else (i + 2, 3)
        assert doc.key_marks[path] == Mark(line, indent)
        assert doc.value_marks[path] == Mark(line, indent + len(name) + 2)
        if i >= 50:
            assert doc.data["nested"][name] == [f"v{i}"]
            assert doc.value_marks[(*path, 0)] == Mark(line, indent + len(name) + 3)


def test_c_and_python_parsers_give_the_same_document(monkeypatch):
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML built without libyaml")
    text = "a: é\nb:\n  - 'ü': [1, {z: 2}]\n  - |\n    block\nc: &x {k: v}\nd: *x\n"
    docs = []
    for cls in (yaml.CSafeLoader, yaml.SafeLoader):
        monkeypatch.setattr(yamldoc, "_Loader", cls)
        docs.append(parse(text))
    assert docs[0] == docs[1]


def test_mark_falls_back_to_nearest_ancestor():
    doc = parse("server:\n  port: 80\n")
    assert doc.mark(["server", "port"]) == Mark(2, 9)
    assert doc.mark(("server", "missing", "deeper")) == Mark(2, 3)
    assert doc.mark(("nothing",)) == Mark(1, 1)
    assert doc.key_mark(("server", "port")) == Mark(2, 3)
    assert doc.key_mark(("server", "missing")) == Mark(2, 3)  # falls back to mark()


# -- file-level checks ----------------------------------------------------------------


def test_ten_mib_file_is_rejected_without_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: [" + b"[" * (10 * 1024 * 1024 - 4))
    with pytest.raises(ConfigError) as info:
        load_document(str(path), {})
    assert info.value.problems == (
        Problem(str(path), 1, 1, "file is 10.0 MiB; the limit is 1 MiB"),
    )


def test_size_limit_applies_to_bytes_too():
    assert problems(b"#" * (2 * 1024 * 1024)) == [(1, 1, "file is 2.0 MiB; the limit is 1 MiB")]


def test_invalid_utf8_is_located(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"version: 1\nserver:\n  name: \xc3\xa9t\xff\n")
    with pytest.raises(ConfigError) as info:
        load_document(str(path), {})
    assert info.value.problems == (
        Problem(str(path), 3, 11,
                "file is not UTF-8 text (invalid byte 0xff at line 3, column 11)"),
    )


def test_byte_order_mark_is_accepted():
    doc = parse_document(b"\xef\xbb\xbfversion: 1\n", FILE, {})
    assert doc.data == {"version": 1}
    assert doc.key_marks[("version",)] == Mark(1, 1)


def test_control_characters_are_located():
    assert problems(b"a: 1\nb: x\x07y\n") == [
        (2, 5, "control character U+0007 is not allowed in YAML text"),
    ]


def test_load_document_reads_the_file_and_reports_missing_files(tmp_path):
    path = tmp_path / "gatewayd.yaml"
    path.write_text("version: 1\n")
    doc = load_document(str(path), {})
    assert (doc.path, doc.data) == (str(path), {"version": 1})
    with pytest.raises(ConfigError) as info:
        load_document(str(tmp_path / "missing.yaml"), {})
    (p,) = info.value.problems
    assert (p.line, p.column) == (1, 1)
    assert p.message.startswith("cannot read the file: ")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_empty_file(text):
    assert problems(text) == [(1, 1, "the file is empty; it needs at least 'version: 1'")]


@pytest.mark.parametrize(("text", "where", "found"), [
    ("- version: 1\n", (1, 1), "a list"),
    ("# hi\n  just text\n", (2, 3), "a string"),
    ("42\n", (1, 1), "a number"),
    ("~\n", (1, 1), "null"),
])
def test_top_level_must_be_a_mapping(text, where, found):
    message = ("the top level must be a mapping of keys (version, server, providers, ...), "
               f"found {found}")
    assert problems(text) == [(*where, message)]


def test_only_one_document():
    assert problems("a: 1\n---\nb: 2\n") == [
        (2, 1, "only one YAML document is allowed per file"),
    ]


@pytest.mark.usefixtures("loader")
@pytest.mark.parametrize(("text", "expected"), [
    ("version: 1\nserver: port: 80\n", (2, 13, "invalid YAML: mapping values are not allowed here")),
    ("a: 'unterminated\n", (2, 1, ("invalid YAML: found unexpected end of stream "
                               "(while scanning a quoted scalar at line 1, column 4)"))),
    ("a: [1, 2\n", (2, 1, ("invalid YAML: expected ',' or ']', but got '<stream end>' "
                        "(while parsing a flow sequence at line 1, column 4)"))),
])
def test_syntax_errors_are_located_with_the_clear_message(text, expected):
    # Under libyaml the message is re-read from the Python parser: same wording.
    assert problems(text) == [expected]


def test_problems_before_a_syntax_error_are_kept():
    assert problems("a: 1\na: 2\nb: [\n") == [
        (2, 1, "duplicate key 'a' (first at line 1)"),
        (4, 1, ("invalid YAML: expected the node content, but found '<stream end>' "
               "(while parsing a flow node at line 4, column 1)")),
    ]


# -- tags ----------------------------------------------------------------------------


def test_python_tags_are_rejected_and_nothing_runs(tmp_path, loader):
    marker = tmp_path / "pwned"
    text = f'version: 1\nhook: !!python/object/apply:os.system ["touch {marker}"]\n'
    assert problems(text) == [
        (2, 7, ("tag '!!python/object/apply:os.system' is not allowed "
               "(gatewayd reads plain YAML only)")),
    ]
    assert not marker.exists()


def test_other_tags():
    assert problems("""\
        a: !foo x
        b: !!python/object:os.system {}
        c: !!binary aGk=
        d: !!set {x}
        e: !!map [1]
        f: !!int abc
        """) == [
        (1, 4, "tag '!foo' is not allowed (gatewayd reads plain YAML only)"),
        (2, 4, "tag '!!python/object:os.system' is not allowed (gatewayd reads plain YAML only)"),
        (3, 4, "tag '!!binary' is not allowed (gatewayd reads plain YAML only)"),
        (4, 4, "tag '!!set' is not allowed (gatewayd reads plain YAML only)"),
        (5, 4, "tag '!!map' cannot be used on a list"),
        (6, 4, "'abc' cannot be read as !!int"),
    ]


def test_standard_tags_are_honoured():
    text = "a: !!str 12\nb: !!int '12'\nc: !!float 1\nd: !!bool yes\ne: !!null ''\nf: !!map {}\n"
    doc = parse(text)
    assert doc.data == {"a": "12", "b": 12, "c": 1.0, "d": True, "e": None, "f": {}}
    assert doc.data == yaml.safe_load(text)


# -- anchors and aliases ----------------------------------------------------------------


def test_aliases_are_expanded_copied_and_located(loader):
    doc = parse("""\
        defaults: &d
          timeout: 30
          retry: {count: 2}
        a: *d
        """)
    assert doc.data["a"] == {"timeout": 30, "retry": {"count": 2}}
    assert doc.data["a"] is not doc.data["defaults"]
    assert doc.data["a"]["retry"] is not doc.data["defaults"]["retry"]
    assert doc.value_marks[("a",)] == Mark(4, 4)  # the alias, where it is used
    assert doc.value_marks[("a", "retry", "count")] == Mark(3, 18)  # its insides, at the anchor
    assert doc.key_marks[("a", "timeout")] == Mark(2, 3)


def test_alias_errors():
    assert problems("a: *nope\nb: &self [1, *self]\n") == [
        (1, 4, "alias '*nope' is used before any anchor '&nope'"),
        (2, 14, "alias '*self' is used inside its own anchor '&self'"),
    ]


def test_billion_laughs_is_capped(loader):
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]")
    found = problems("\n".join(lines) + "\n")
    # a..d hold 11 + 111 + 1111 + 11111 values; the 8th '*d' in e passes 100000.
    assert found == [(5, 36, "alias '*d' expands the document past 100000 values")]


def test_merge_keys_are_rejected():
    # A deliberate choice: '<<' hides where a value came from; write keys out.
    assert problems("base: &b {x: 1}\nchild:\n  <<: *b\n  y: 2\n") == [
        (3, 3, "merge keys ('<<') are not supported; write the keys out"),
    ]
    assert parse("a: '<<'\n'<<': x\n").data == {"a": "<<", "<<": "x"}


# -- depth ------------------------------------------------------------------------


@pytest.mark.usefixtures("loader")
def test_ten_thousand_brackets_do_not_recurse():
    assert problems("[" * 10000) == [(1, 65, "nested too deeply (more than 64 levels)")]


@pytest.mark.usefixtures("loader")
def test_two_hundred_nested_mappings():
    text = "".join("  " * i + f"k{i}:\n" for i in range(200))
    assert problems(text) == [(65, 129, "nested too deeply (more than 64 levels)")]


def test_sixty_four_levels_are_allowed():
    # The top mapping is level 1, so 62 nested keys plus a list make 64 levels.
    text = "".join("  " * i + f"k{i}:\n" for i in range(62)) + "  " * 62 + "last: [x]\n"
    doc = parse(text)
    path = tuple(f"k{i}" for i in range(62)) + ("last", 0)
    assert doc.value_marks[path] == Mark(63, 2 * 62 + 8)
    deeper = "".join("  " * i + f"k{i}:\n" for i in range(63)) + "  " * 63 + "last: [x]\n"
    assert problems(deeper) == [(64, 2 * 63 + 7, "nested too deeply (more than 64 levels)")]


# -- keys ---------------------------------------------------------------------------


def test_duplicate_keys_point_at_the_second():
    assert problems("""\
        version: 1
        providers: {}
        server:
          port: 1
          port: 2
        providers: []
        """) == [
        (5, 3, "duplicate key 'port' (first at line 4)"),
        (6, 1, "duplicate key 'providers' (first at line 2)"),
    ]


def test_non_string_keys():
    assert problems("""\
        1: x
        null: y
        on: true
        "off": fine
        Yes: 1
        [a]: b
        ?
        : empty
        """) == [
        (1, 1, "keys must be strings, found 1"),
        (2, 1, "keys must be strings, found null"),
        (3, 1, "key 'on' is read by YAML as a boolean; quote it"),
        (5, 1, "key 'Yes' is read by YAML as a boolean; quote it"),
        (6, 1, "keys must be strings, found a list"),
        (7, 2, "keys must be strings, found an empty key"),
    ]


# -- environment interpolation -----------------------------------------------------------


def test_interpolation_forms():
    env = {"HOST": "example.com", "PORT": "8080", "EMPTY": ""}
    doc = parse(r"""
        url: https://${HOST}:${PORT}/v1
        port: ${PORT}
        region: ${REGION:-us-east-1}
        optional: ${OPTIONAL:-}
        empty_uses_default: ${EMPTY:-fallback}
        empty_plain: "${EMPTY}"
        escaped: $${HOST} and $$HOST and $5
        default_with_colon: ${X:-a:b/c d}
        ${HOST}: keys are not interpolated
        block: |
          user=${HOST}
        """, env)
    assert doc.data == {
        "url": "https://example.com:8080/v1",
        "port": "8080",  # a whole-value reference stays a string
        "region": "us-east-1",
        "optional": "",
        "empty_uses_default": "fallback",
        "empty_plain": "",
        "escaped": "${HOST} and $$HOST and $5",
        "default_with_colon": "a:b/c d",
        "${HOST}": "keys are not interpolated",
        "block": "user=example.com\n",
    }
    assert doc.env_refs == {
        "HOST": "example.com", "PORT": "8080", "REGION": None, "OPTIONAL": None,
        "EMPTY": "", "X": None,
    }


def test_unset_variable_is_named_and_located():
    assert problems("""\
        providers:
          openai:
            key: "Bearer ${OPENAI_KEY}"
        """) == [
        (3, 10, ("environment variable 'OPENAI_KEY' is not set "
                "(use ${OPENAI_KEY:-} for an optional value)")),
    ]


def test_malformed_references():
    assert problems("a: ${1X}\nb: x ${\nc: ${A:default}\nd: ${}\n") == [
        (1, 4, ("malformed environment reference '${1X}' "
               "(write ${NAME} or ${NAME:-default}; $${ for a literal ${)")),
        (2, 4, ("malformed environment reference '${' "
               "(write ${NAME} or ${NAME:-default}; $${ for a literal ${)")),
        (3, 4, ("malformed environment reference '${A:default}' "
               "(write ${NAME} or ${NAME:-default}; $${ for a literal ${)")),
        (4, 4, ("malformed environment reference '${}' "
               "(write ${NAME} or ${NAME:-default}; $${ for a literal ${)")),
    ]


def test_values_never_appear_in_messages():
    secret = "sk-very-secret-value"
    env = {"SECRET": secret}
    with pytest.raises(ConfigError) as info:
        parse_document(
            b"a: ${SECRET}\na: ${SECRET}x\nb: !!int ${SECRET}\nc: ${MISSING}${SECRET}\n[x]: y\n"
            b"- broken", FILE, env)
    text = str(info.value) + repr([p.as_dict() for p in info.value.problems])
    assert len(info.value.problems) >= 4
    assert secret not in text


def test_every_problem_is_reported_sorted():
    found = problems("""\
        version: 1
        server:
          key: ${API_KEY}
          bind: !env x
        server: {}
        on: 1
        """)
    assert found == [
        (3, 8, "environment variable 'API_KEY' is not set (use ${API_KEY:-} for an optional value)"),
        (4, 9, "tag '!env' is not allowed (gatewayd reads plain YAML only)"),
        (5, 1, "duplicate key 'server' (first at line 2)"),
        (6, 1, "key 'on' is read by YAML as a boolean; quote it"),
    ]


def test_interpolate_is_one_function_for_the_loader_and_gatewayd_reload():
    refs: dict = {}
    env = {"A": "1", "EMPTY": ""}
    assert yamldoc.interpolate("no reference", env) == ("no reference", [])
    assert yamldoc.interpolate("${A}-${EMPTY:-d}-${UNSET:-u}-$${A}", env, refs) == ("1-d-u-${A}", [])
    assert refs == {"A": "1", "EMPTY": "", "UNSET": None}
    text, found = yamldoc.interpolate("x${MISSING}y${bad name}", env)
    assert text == "xy"
    assert found == ["environment variable 'MISSING' is not set (use ${MISSING:-} for an optional value)",
                     "malformed environment reference '${bad name}' (write ${NAME} or ${NAME:-default}; "
                     "$${ for a literal ${)"]
