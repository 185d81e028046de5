"""Command templates: from the words after ``--`` to what one row runs.

Several words after ``--`` are a command line (literal words are quoted as the
shell gave them: :func:`build_template`); one word is a shell script (pipes,
redirects allowed). ``{field}`` takes the row's value; ``{index}``, ``{seed}``
and ``{job}`` are always there; a format spec (``{alpha:.3f}``) is applied in
Python, a numeric one to the number a CSV cell spells.

Values are data, never code
---------------------------

A value is never pasted into the script. Each placeholder becomes a reference
to an environment variable the task is started with, and the shell expands it
once, as data::

    template   echo "fit {alpha}" > {name}.txt
    runs       /bin/sh -c 'echo "fit ${CLOUDLOOP_VALUE_1}" > "${CLOUDLOOP_VALUE_2}".txt'
    with       CLOUDLOOP_VALUE_1=<alpha>  CLOUDLOOP_VALUE_2=<name>
    log shows  $ echo "fit 0.5" > 'my run'.txt

So whatever a value holds (quotes, ``$(…)``, backticks, ``;``, newlines, ``*``)
the program gets exactly those bytes as one argument (or part of one). Before
anything runs, :func:`compile_template` reads the template once as ``/bin/sh``
reads it (:mod:`cloudloop.shellsyntax`: every placeholder must stand where
that is true) and checks every command in it for handing a value to something
that parses it again (:mod:`cloudloop.shellrules`)::

    template ─compile_template─> Script (cached)   text: the script to run
                                                   pieces: literal text and Slots
    Script + row ─prepare─> CommandLine            script, env (the values), shown

:func:`prepare` refuses a row that cannot fill the template: a missing field,
a null, a NUL byte (no command can take one), a non-number where a format spec
or ``$((…))`` needs a number.
"""

from __future__ import annotations

import functools
import itertools
import re
import shlex
import string
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .shellrules import check_command
from .shellsyntax import Lexer, Slot

_SAFE = re.compile(r"^[\w@%+=:,./-]*$")
_WHOLE = re.compile(r"^[+-]?[0-9]+$")


def build_template(argv: list[str]) -> str:
    """The command template from the words after ``--``."""
    if not argv:
        raise ConfigError("no command given: put it after '--', e.g. -- Rscript fit.R {alpha}")
    if len(argv) == 1:
        return argv[0]
    out = []
    for word in argv:
        parts = []
        for literal, fname, spec, conv in _parse(word):
            if literal:
                lit = literal.replace("{", "{{").replace("}", "}}")
                parts.append(lit if _SAFE.match(literal) else shlex.quote(lit))
            if fname is not None:
                parts.append(_field_text(fname, spec, conv))
        out.append("".join(parts))
    return " ".join(out)


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in _parse(template) if f]


def _parse(template: str) -> list[tuple]:
    try:
        return list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(
            f"command template {template!r} is malformed: {e}; write a literal brace as {{{{ or }}}}"
        ) from None


def _field_text(fname: str, spec: str | None, conv: str | None) -> str:
    return "{" + fname + ("!" + conv if conv else "") + (":" + spec if spec else "") + "}"


@dataclass(frozen=True)
class Script:
    """A checked template: the script to run and the placeholders it expands."""

    text: str
    pieces: tuple  # literal strings and Slots, in template order
    words: tuple[str, ...]  # literal words of its commands (files it may name)


@functools.lru_cache(maxsize=128)
def compile_template(template: str) -> Script:
    """Check where every placeholder stands; raise ConfigError if one is unsafe."""
    pieces: list[Any] = []
    for literal, fname, spec, conv in _parse(template):
        pieces.extend(literal)
        if fname is not None:
            pieces.append(Slot(0, _field_text(fname, spec, conv), fname))
    lexer = Lexer(pieces)
    lexer.run()
    for cmd in lexer.commands:
        check_command(cmd)
    text: list[Any] = []  # runs of literal characters joined, placeholders numbered
    for is_slot, group in itertools.groupby(pieces, key=lambda p: isinstance(p, Slot)):
        run = list(group)
        text += run if is_slot else ["".join(run)]
    for n, slot in enumerate((p for p in text if isinstance(p, Slot)), 1):
        slot.n = n
    words = [w.text for c in lexer.commands for w in c.words + c.inputs if w.plain and not w.slots]
    script = "".join(p.expansion() if isinstance(p, Slot) else p for p in text)
    return Script(script, tuple(text), tuple(words))


# -- filling a template ----------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    """What one task runs: ``/bin/sh -c script`` with ``env``; ``shown`` is for people."""

    script: str
    env: dict[str, str]
    shown: str


class _Fill(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            raise ValueError("it is null (no value); give it one")
        kind = format_spec[-1:]
        if isinstance(value, str) and kind and kind in "dbcoxXeEfFgGn%":
            try:
                value = int(value) if kind in "dbcoxX" else float(value)
            except ValueError:
                raise ValueError(f"{value!r} is not the number :{format_spec} needs") from None
        return super().format_field(value, format_spec)


def prepare(
    template: str, item: Any, index: int, seed: int = 0, job: str = "", where: str = ""
) -> CommandLine:
    """The script, environment and display line for one row.

    Raises ConfigError for an unsafe template or a row that cannot fill it
    (a missing field, a NUL byte, a non-number where a number is needed);
    ``where`` names the row in the message (default: ``task INDEX``).
    """
    script = compile_template(template)
    fields = dict(item) if isinstance(item, dict) else {"item": item}
    fields.setdefault("index", index)
    fields.setdefault("seed", seed)
    fields.setdefault("job", job)
    where = where or f"task {index}"
    env: dict[str, str] = {}
    shown: list[str] = []
    for p in script.pieces:
        if isinstance(p, str):
            shown.append(p)
            continue
        value = _value(p, fields, where)
        env[p.var] = value
        shown.append(_show(value, p.ctx))
    return CommandLine(script.text, env, "".join(shown))


def _value(slot: Slot, fields: dict, where: str) -> str:
    try:
        value = _Fill().vformat(slot.text, (), fields)
    except KeyError as e:
        known = ", ".join(sorted(map(str, fields)))
        raise ConfigError(
            f"{where} has no field {e.args[0]!r} used in the command; its fields: {known}"
        ) from None
    except (IndexError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError(
            f"{where}, field {slot.name!r}: {slot.text} cannot be filled: {e}"
        ) from None
    if "\x00" in value:
        raise ConfigError(
            f"{where}, field {slot.name!r}: the value holds a NUL byte, which cannot be passed "
            "to a command; remove it from the items file"
        )
    if slot.ctx == "arith" and not _WHOLE.match(value):
        raise ConfigError(
            f"{where}, field {slot.name!r}: {value!r} is used in $((…)) and must be a whole number"
        )
    return value


def _show(value: str, ctx: str) -> str:
    if ctx == "word":
        return shlex.quote(value)
    if ctx == "dquote":
        return re.sub(r'([\\"$`])', r"\\\1", value)
    return value


def render(template: str, item: Any, index: int, seed: int = 0, job: str = "") -> str:
    """The command for one row as people read it (values quoted); not what runs."""
    return prepare(template, item, index, seed, job).shown
