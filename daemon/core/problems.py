"""Located configuration problems, shared by every stage of the config pipeline.

Loading, validation and compilation all report what is wrong with the YAML
file as `Problem`s pointing at file:line:column, so an editor or a terminal
can jump straight to the spot.  Stages collect every problem they can find
and raise one `ConfigError` carrying all of them: fixing a config one error
per reload cycle is miserable.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# how common API keys start (OpenAI, Anthropic, Stripe-style, Mailgun, AWS, GitHub, GitLab,
# Slack, Hugging Face, Groq, Google, JWTs)
KEY_PREFIXES = ("sk-", "sk_", "rk_", "pk_", "key-", "AKIA", "ASIA", "ghp_", "gho_", "ghs_", "ghu_",
                "github_pat_", "glpat-", "xoxb-", "xoxp-", "hf_", "gsk_", "AIza", "eyJ")
# random letters and digits: names and URLs break into shorter words at '-', '.', '/', '_'
TOKEN_RUN = re.compile(r"[A-Za-z0-9]{20,}")
BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{30,}")  # e.g. an AWS secret access key
SHOWN_OF_A_SECRET = 4  # characters of a possible secret a message shows


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file, at a 1-based line and column."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def as_dict(self) -> dict:
        """A JSON-ready form, for the admin API and `gatewayd check --json`."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
        }


class ConfigError(Exception):
    """Raised with every problem found, not only the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest choice, or "" if none is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def could_be_secret(text: str) -> bool:
    """Whether `text` may be a credential pasted into the wrong field: it holds 20 or more
    letters and digits in a row, both mixed, or 30 or more of base64 with both cases and digits,
    or a word that starts the way API keys start."""
    if any(not run.isalpha() and not run.isdigit() for run in TOKEN_RUN.findall(text)):
        return True
    if any(mixes_cases_and_digits(run) for run in BASE64_RUN.findall(text)):
        return True
    return any(word.startswith(KEY_PREFIXES) and len(word) >= 16 and any(c.isdigit() for c in word)
               for word in text.split())


def mixes_cases_and_digits(text: str) -> bool:
    return any(c.isupper() for c in text) and any(c.islower() for c in text) and any(c.isdigit() for c in text)


def quoted(value: Any) -> str:
    """A config value as a message quotes it: `'text'`, or, when it could be a secret, only its
    first characters and its length, `'sk-p…(40 characters)'`: messages reach logs, /admin/status
    and events."""
    text = str(value)
    if could_be_secret(text):
        return f"'{text[:SHOWN_OF_A_SECRET]}…({len(text)} characters)'"
    return f"'{text}'"
