"""Command tasks: one shell command per row of a table, in any language.

``cloudloop run --items params.csv -- Rscript fit.R --alpha {alpha}``

Several words after ``--`` are a command line (literal words are quoted as the
shell gave them); one word is a shell script (pipes, redirects allowed).
``{field}`` takes the row's value; ``{index}``, ``{seed}`` and ``{job}`` are
always there; a format spec (``{alpha:.3f}``) is applied in Python, a numeric
one to the number a CSV cell spells. Each task runs in its own new working
directory holding copies of the job's shipped files; a non-zero exit is a
failure that keeps the stderr tail.

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
anything runs, the template is read once as ``/bin/sh`` reads it, and every
placeholder must stand where that is true:

=========================================  =====================================
accepted                                   refused (the message says what to do)
=========================================  =====================================
unquoted, in a word: ``--a={a}``           inside ``'…'`` or ``$'…'``
inside ``"…"``                             after a backslash, or right after ``$``
inside ``$(…)``, ``<(…)`` (parsed afresh)  inside backticks (use ``$(…)``), ``${…}``
``$((…))``/``((…))``: whole numbers only   in a here-document or its delimiter
a redirection target: ``> {name}.txt``     as the command itself: ``{prog} x``
=========================================  =====================================

Expanding once is not enough when the command hands the text to something
that parses it again, so these are refused too: the code of a nested shell or
interpreter (``sh -c "… {v}"``, ``bash -lc``, ``python -c``, ``perl -e``,
``node -e``, ``Rscript -e``, awk and sed programs; also found behind ``env``,
``sudo``, ``timeout``, ``xargs``, ``find -exec``, ``docker exec … sh -c``), the
program or options an interpreter takes (``python {script}``), every argument
of ``eval``, ``ssh``, ``su``, ``watch``, ``parallel``, ``trap``, ``source``,
and bash's code-evaluating places (``[[ … ]]``, ``let``, ``declare -i``,
``read``/``unset`` names). A pipe or ``<`` into a shell or interpreter that
reads its program from standard input (``echo {v} | sh``) is refused as well.
The way out is always the same: pass the value as an argument after the
program, ``sh -c 'echo "$1"' sh {v}``, ``python -c 'import sys; …' {v}``.

What this cannot know: what a program you name does with an argument. A value
that starts with ``-`` reaches it as that word, and a program that reads
options there (``tar``, ``rm``) takes it as one: write ``--`` before the
placeholder (``rm -- {f}``) or ``--opt={v}``. A template that itself hands a
variable to a nested shell (``x={v}; sh -c "$x"``) runs what it was told to.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import os
import re
import shlex
import string
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procs
from .errors import CommandFailed, ConfigError

STDOUT_KEEP = 1 << 20
STDERR_KEEP = 16 << 10
_SAFE = re.compile(r"^[\w@%+=:,./-]*$")
_VAR = "CLOUDLOOP_VALUE_{}"
_MARK = "\x00"  # stands for a placeholder in a word's text (a NUL can never be in a template)
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")
_WHOLE = re.compile(r"^[+-]?[0-9]+$")


# -- the items file ------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """The rows of an items file, with where each starts (for error messages)."""

    name: str
    items: list[Any]
    starts: list[int]
    unit: str = "line"

    def where(self, i: int) -> str:
        return f"{self.name} {self.unit} {self.starts[i]}"


def read_table(path: str | Path) -> Table:
    """Rows of a ``.csv`` (dicts of strings), ``.jsonl`` or ``.json`` (a list) file.

    Raises ConfigError, naming the file and line, for anything that is not a
    clean table: not UTF-8, bad JSON, a CSV row with missing or extra cells,
    a duplicate column, no rows at all.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise ConfigError(f"items file {name!r} does not exist")
    suffix = path.suffix.lower()
    readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl}
    if suffix == ".json":
        table = _read_json(name, _decode(path))
    elif suffix in readers:
        table = readers[suffix](name, _decode(path))
    else:
        raise ConfigError(f"items file {name!r}: use .csv, .jsonl or .json")
    if not table.items:
        raise ConfigError(f"items file {name!r} has no rows: nothing to run (one task per row)")
    return table


def load_items(path: str | Path) -> Iterator[Any]:
    """The items of :func:`read_table`, one by one."""
    yield from read_table(path).items


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            "save the file as UTF-8 (in Excel: CSV UTF-8)"
        ) from None


def _read_csv(name: str, text: str) -> Table:
    reader = csv.reader(io.StringIO(text, newline=""))
    items: list[Any] = []
    starts: list[int] = []
    try:
        header = next(reader, None)
        if not header:
            raise ConfigError(f"items file {name!r} is empty: it needs a header line of names")
        dup = sorted({c for c in header if header.count(c) > 1})
        if dup:
            raise ConfigError(f"{name}:1: column {dup[0]!r} is named twice in the header")
        last = reader.line_num
        for row in reader:
            start, last = last + 1, reader.line_num
            if row:
                _check_cells(name, start, header, row)
                items.append(dict(zip(header, row)))
                starts.append(start)
    except csv.Error as e:
        raise ConfigError(f"{name}:{reader.line_num}: not valid CSV: {e}") from None
    return Table(name, items, starts)


def _check_cells(name: str, line: int, header: list[str], row: list[str]) -> None:
    if len(row) < len(header):
        raise ConfigError(
            f"{name} line {line}: no cell for column {header[len(row)]!r} ({len(row)} of "
            f"{len(header)} cells); add it, even empty (a trailing comma)"
        )
    if len(row) > len(header):
        raise ConfigError(
            f"{name} line {line}: {len(row)} cells but the header names {len(header)} "
            "columns; name the extra column in the header or remove the cell"
        )


def _read_jsonl(name: str, text: str) -> Table:
    items, starts = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append(json.loads(line))
            except ValueError as e:
                raise ConfigError(f"{name}:{n}: not valid JSON: {e}") from None
            starts.append(n)
    return Table(name, items, starts)


def _read_json(name: str, text: str) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, list):
        raise ConfigError(
            f"{name} holds a JSON {type(data).__name__}, not a list of items: write "
            "[{...}, {...}], or use .jsonl with one item per line"
        )
    return Table(name, data, list(range(1, len(data) + 1)), unit="item")


# -- the template --------------------------------------------------------------


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


@dataclass(eq=False)
class _Slot:
    """One placeholder: where it stands in the shell's grammar decides its expansion."""

    n: int
    text: str
    name: str
    ctx: str = ""

    @property
    def var(self) -> str:
        return _VAR.format(self.n)

    def expansion(self) -> str:
        return f'"${{{self.var}}}"' if self.ctx == "word" else f"${{{self.var}}}"


@dataclass(frozen=True)
class Script:
    """A checked template: the script to run and the placeholders it expands."""

    text: str
    pieces: tuple  # literal strings and _Slots, in template order
    words: tuple[str, ...]  # literal words of its commands (files it may name)


@functools.lru_cache(maxsize=128)
def compile_template(template: str) -> Script:
    """Check where every placeholder stands; raise ConfigError if one is unsafe."""
    pieces: list[Any] = []
    for literal, fname, spec, conv in _parse(template):
        pieces.extend(literal)
        if fname is not None:
            pieces.append(_Slot(0, _field_text(fname, spec, conv), fname))
    lexer = _Lexer(pieces)
    lexer.run()
    for cmd in lexer.commands:
        _check_command(cmd)
    text: list[Any] = []  # runs of literal characters joined, placeholders numbered
    for is_slot, group in itertools.groupby(pieces, key=lambda p: isinstance(p, _Slot)):
        run = list(group)
        text += run if is_slot else ["".join(run)]
    for n, slot in enumerate((p for p in text if isinstance(p, _Slot)), 1):
        slot.n = n
    words = [w.text for c in lexer.commands for w in c.words + c.inputs if w.plain and not w.slots]
    script = "".join(p.expansion() if isinstance(p, _Slot) else p for p in text)
    return Script(script, tuple(text), tuple(words))


def _unsafe(slot: _Slot, why: str, instead: str) -> ConfigError:
    return ConfigError(f"command template: {slot.text} {why}; {instead.replace('{v}', slot.text)}")


_PLACES = {
    "squote": ("is inside '…' quotes, where only its text could be pasted",
               "close the quotes before it or use double quotes: echo 'x='{v} or \"x={v}\""),
    "backslash": ("follows a backslash", "remove the backslash before it"),
    "dollar": ("follows a '$'", "write {v} alone (a shell variable is ${{name}} in a template)"),
    "backtick": ("is inside `…`", "use $(…) instead of backticks"),
    "param": ("is inside ${…}", "give it a variable first: x={v}; … \"${{x:-default}}\""),
    "heredoc": ("is in a here-document (<<), text that a program may run as code",
                "pass it as an argument, or write it with printf '%s\\n' {v} > file"),
}  # fmt: skip


@dataclass(eq=False)
class _Word:
    text: str = ""
    slots: list = field(default_factory=list)
    plain: bool = True  # nothing expands in it: text is what the program gets
    quoted: bool = False


@dataclass(eq=False)
class _Command:
    words: list = field(default_factory=list)
    inputs: list = field(default_factory=list)  # targets of <, <<< (what it reads)
    after: _Command | None = None  # the pipeline stage before it

    def upstream(self) -> list[_Slot]:
        c, out = self.after, []
        while c is not None:
            out += [s for w in c.words + c.inputs for s in w.slots]
            c = c.after
        return out


class _Lexer:
    """Reads the template as /bin/sh would, deciding each placeholder's context."""

    def __init__(self, stream: list[Any]):
        self.s = stream
        self.i = 0
        self.commands: list[_Command] = []
        self.heredocs: list[tuple[str, bool]] = []

    def peek(self) -> Any:
        return self.s[self.i] if self.i < len(self.s) else None

    def take(self, unclosed: str = "") -> Any:
        if self.i >= len(self.s):
            raise ConfigError(f"command template has an unclosed {unclosed}; close it")
        self.i += 1
        return self.s[self.i - 1]

    def run(self) -> None:
        self.script(nested=False)

    def script(self, nested: bool) -> list[_Slot]:
        b = _Builder(self)
        depth = 0
        while self.i < len(self.s):
            c = self.take()
            if isinstance(c, _Slot):
                c.ctx = "word"
                b.add(b.w(), [c])
            elif c in " \t":
                b.end_word()
            elif c == "\n":
                b.end_command()
                self.read_heredocs()
            elif c == "#" and b.word is None:
                while self.peek() not in ("\n", None):
                    s = self.take()
                    if isinstance(s, _Slot):
                        s.ctx = "word"  # a comment: whatever it expands to, nothing runs
            elif c == ")" and nested and depth == 0:
                b.end_command()
                return b.slots
            elif c in "();&|<>":
                depth = self.operator(c, b, depth)
            else:
                self.word_char(c, b)
        if nested:
            raise ConfigError("command template has an unclosed $( or <(; close it")
        b.end_command()
        return b.slots

    def word_char(self, c: str, b: _Builder) -> None:
        w = b.w()
        if c == "\\":
            n = self.peek()
            if isinstance(n, _Slot):
                raise _unsafe(n, *_PLACES["backslash"])
            if n is not None:
                self.take()
                w.text += "" if n == "\n" else n
        elif c == "'":
            self.single(w)
        elif c == '"':
            self.double(w, b)
        elif c == "`":
            self.backtick(w)
        elif c == "$":
            self.dollar(w, b, quoted=False)
        else:
            w.text += c

    def operator(self, c: str, b: _Builder, depth: int) -> int:
        if c == "(":
            if b.word is None and self.peek() == "(":  # (( … )): bash arithmetic
                self.take()
                b.slots += self.arith()
                return depth
            b.end_command()
            return depth + 1
        if c == ")":
            b.end_command()
            return max(depth - 1, 0)
        if c in "<>" or (c == "&" and self.peek() == ">"):
            self.redirect(c, b)
        elif c == "|" and self.peek() != "|":
            if self.peek() == "&":
                self.take()
            b.end_command(pipe=True)
        else:
            while self.peek() in ("&", "|", ";"):
                self.take()
            b.end_command()
        return depth

    def redirect(self, c: str, b: _Builder) -> None:
        w = b.word
        if w is not None and w.plain and not w.quoted and w.text.isdigit() and c != "&":
            b.word = None  # 2> : a file descriptor, not a word
        else:
            b.end_word()
        if c in "<>" and self.peek() == "(":  # <( … ): a process substitution is a word
            self.take()
            w = b.w()
            w.plain = False
            b.add(w, self.script(nested=True))
            return
        op = c
        while isinstance(self.peek(), str) and op + self.peek() in _REDIRECTS:
            op += self.take()
        b.redir = op

    def single(self, w: _Word, ansi: bool = False) -> None:
        w.quoted = True
        while True:
            c = self.take("' quote")
            if isinstance(c, _Slot):
                raise _unsafe(c, *_PLACES["squote"])
            if c == "'":
                return
            if ansi and c == "\\":
                c = self.take("$' quote")
                if isinstance(c, _Slot):
                    raise _unsafe(c, *_PLACES["squote"])
            w.text += c

    def double(self, w: _Word, b: _Builder) -> None:
        w.quoted = True
        while True:
            c = self.take('" quote')
            if isinstance(c, _Slot):
                c.ctx = "dquote"
                b.add(w, [c])
            elif c == '"':
                return
            elif c == "\\":
                n = self.peek()
                if isinstance(n, _Slot):
                    raise _unsafe(n, *_PLACES["backslash"])
                if n is not None and n in '$`"\\\n':
                    self.take()
                    w.text += "" if n == "\n" else n
                else:
                    w.text += c
            elif c == "$":
                self.dollar(w, b, quoted=True)
            elif c == "`":
                self.backtick(w)
            else:
                w.text += c

    def dollar(self, w: _Word, b: _Builder, quoted: bool) -> None:
        n = self.peek()
        if isinstance(n, _Slot):
            raise _unsafe(n, *_PLACES["dollar"])
        w.plain = False
        if n == "(":
            self.take()
            if self.peek() == "(":
                self.take()
                b.add(w, self.arith())
            else:
                b.add(w, self.script(nested=True))
        elif n == "{":
            self.take()
            self.param()
        elif n == "'" and not quoted:
            self.take()
            self.single(w, ansi=True)
        elif n == '"' and not quoted:
            self.take()
            self.double(w, b)
        else:
            w.text += "$"

    def arith(self) -> list[_Slot]:
        depth, slots = 0, []
        while True:
            c = self.take("$(( or ((")
            if isinstance(c, _Slot):
                c.ctx = "arith"
                slots.append(c)
            elif c == "(":
                depth += 1
            elif c == ")" and depth:
                depth -= 1
            elif c == ")":
                if self.take("$(( or ((") != ")":
                    raise ConfigError("command template: $(( … ) is not closed by '))'")
                return slots

    def param(self) -> None:
        depth = 1
        while depth:
            c = self.take("${")
            if isinstance(c, _Slot):
                raise _unsafe(c, *_PLACES["param"])
            if c == "\\":
                c = self.take("${")
                if isinstance(c, _Slot):
                    raise _unsafe(c, *_PLACES["param"])
            depth += {"{": 1, "}": -1}.get(c, 0)

    def backtick(self, w: _Word) -> None:
        w.plain = False
        while True:
            c = self.take("` backtick")
            if isinstance(c, _Slot):
                raise _unsafe(c, *_PLACES["backtick"])
            if c == "\\":
                self.take("` backtick")
            elif c == "`":
                return

    def read_heredocs(self) -> None:
        for delim, strip in self.heredocs:
            while self.i < len(self.s):
                line = []
                while self.peek() not in ("\n", None):
                    line.append(self.take())
                if self.peek() == "\n":
                    self.take()
                for s in line:
                    if isinstance(s, _Slot):
                        raise _unsafe(s, *_PLACES["heredoc"])
                text = "".join(line)
                if (text.lstrip("\t") if strip else text) == delim:
                    break
        self.heredocs = []


_REDIRECTS = {"<", "<<", "<<-", "<<<", "<&", "<>", ">", ">>", ">&", ">|", "&>", "&>>"}


class _Builder:
    """The words and commands of one level of the script (top, or inside $( … ))."""

    def __init__(self, lexer: _Lexer):
        self.lx = lexer
        self.cmd = _Command()
        lexer.commands.append(self.cmd)
        self.word: _Word | None = None
        self.redir = ""
        self.slots: list[_Slot] = []

    def w(self) -> _Word:
        if self.word is None:
            self.word = _Word()
        return self.word

    def add(self, w: _Word, slots: list[_Slot]) -> None:
        w.slots += slots
        w.plain = w.plain and not slots
        w.text += _MARK * bool(slots)
        self.slots += slots

    def end_word(self) -> None:
        w, self.word = self.word, None
        if w is None:
            return
        if self.redir in ("<<", "<<-"):
            if w.slots:
                raise _unsafe(w.slots[0], *_PLACES["heredoc"])
            self.lx.heredocs.append((w.text, self.redir == "<<-"))
        elif self.redir:
            if self.redir[0] == "<":
                self.cmd.inputs.append(w)
        else:
            self.cmd.words.append(w)
        self.redir = ""

    def end_command(self, pipe: bool = False) -> None:
        self.end_word()
        self.cmd = _Command(after=self.cmd if pipe else None)
        self.lx.commands.append(self.cmd)


# -- what each command does with its words -------------------------------------


@dataclass(frozen=True)
class _Interp:
    """A program that runs code: which options carry it, and how to pass data instead."""

    example: str
    code: frozenset = frozenset()  # options whose value is program text (-c, -e)
    prog: frozenset = frozenset()  # options whose value names the program (-m, -f)
    value: frozenset = frozenset()  # other options that take the next word
    data: frozenset = frozenset()  # of those, the ones a placeholder may fill (awk -v)
    stdin: bool = True  # with no program named, it reads one from standard input
    text: bool = False  # its first operand is program text (awk, sed), not a file
    args: frozenset = frozenset({"--"})  # after this, only arguments follow


def _fs(*names: str) -> frozenset:
    return frozenset(names)


_PY = _Interp(
    "python -c 'import sys; print(sys.argv[1])' {v}",
    _fs("-c"),
    _fs("-m"),
    _fs("-W", "-X", "--check-hash-based-pycs"),
)
_AWK = _Interp(
    "awk -v v={v} 'BEGIN {{ print v }}'",
    _fs("-e", "--source"),
    _fs("-f", "--file"),
    _fs("-F", "-v", "--assign", "--field-separator", "-i", "--include", "-l", "--load"),
    _fs("-F", "-v", "--assign", "--field-separator"),
    stdin=False,
    text=True,
)
_INTERPRETERS = {
    "python": _PY, "pypy": _PY,
    "perl": _Interp("perl -e 'print $ARGV[0]' {v}", _fs("-e", "-E"), value=_fs("-I", "-M", "-m")),
    "ruby": _Interp("ruby -e 'puts ARGV[0]' {v}", _fs("-e"), value=_fs("-I", "-r", "-C", "-E")),
    "node": _Interp("node -e 'console.log(process.argv[1])' {v}",
                    _fs("-e", "--eval", "-p", "--print"), value=_fs("-r", "--require", "--import")),
    "Rscript": _Interp("Rscript -e 'cat(commandArgs(TRUE)[1])' {v}", _fs("-e"), stdin=False),
    "R": _Interp("Rscript -e 'cat(commandArgs(TRUE)[1])' {v}", _fs("-e"), _fs("-f", "--file"),
                 args=_fs("--", "--args")),
    "julia": _Interp("julia -e 'println(ARGS[1])' {v}", _fs("-e", "-E", "--eval", "--print"),
                     value=_fs("-L", "--load", "-J", "--sysimage", "-t", "--threads", "-p")),
    "php": _Interp("php -r 'echo $argv[1];' {v}", _fs("-r"), _fs("-f"), _fs("-c", "-d", "-z")),
    "lua": _Interp("lua -e 'print(arg[1])' {v}", _fs("-e"), value=_fs("-l")),
    "tclsh": _Interp("tclsh script.tcl {v}"),
    "awk": _AWK, "gawk": _AWK, "mawk": _AWK, "nawk": _AWK,
    "sed": _Interp("awk -v v={v} … (sed cannot take data in its script)", _fs("-e", "--expression"),
                   _fs("-f", "--file"), _fs("-l", "--line-length"), stdin=False, text=True),
}  # fmt: skip
_INTERPRETERS.update(nodejs=_INTERPRETERS["node"], gsed=_INTERPRETERS["sed"])
_SHELLS = _fs("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "posh", "fish", "csh",
              "tcsh")  # fmt: skip
_SHELL_EXAMPLE = "sh -c 'echo \"$1\"' sh {v}"
_EVALUATORS = {
    "eval": "eval runs its arguments as shell code",
    ".": ". runs a file of shell code", "source": "source runs a file of shell code",
    "trap": "trap's action is shell code", "alias": "an alias is shell code",
    "ssh": "ssh hands its command to the remote shell, which parses it again; run the "
           "command on workers there (an ssh profile), or ship a script that reads \"$1\"",
    "su": "su runs its command through a shell", "runuser": "runuser runs it through a shell",
    "watch": "watch runs its command through sh -c",
    "parallel": "GNU parallel runs its command through a shell",
    "script": "script -c runs its command through a shell",
    "flock": "flock -c runs its command through a shell",
    "tmux": "tmux hands its command to a shell", "screen": "screen hands it to a shell",
    "let": "let evaluates arithmetic, which in bash can run code",
    "[[": "bash evaluates [[ … ]] operands as arithmetic, which can run code; use [ … ]"
           " (test), which reads them as data",
    "unset": "bash evaluates a variable name as code", "read": "bash evaluates it as a name",
    "getopts": "bash evaluates it as a name", "mapfile": "bash evaluates it as a name",
    "readarray": "bash evaluates it as a name",
}  # fmt: skip
_TYPED = _fs("declare", "typeset", "local", "export", "readonly")
_WRAPPERS: dict[str, tuple[frozenset, int]] = {
    "env": (_fs("-u", "--unset", "-C", "--chdir"), 0),
    "sudo": (_fs("-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "-T", "--user", "--group",
                 "--host", "--prompt", "--chdir", "--role", "--type", "--other-user"), 0),
    "doas": (_fs("-u", "-C"), 0), "nohup": (_fs(), 0), "setsid": (_fs(), 0),
    "unbuffer": (_fs(), 0), "builtin": (_fs(), 0), "busybox": (_fs(), 0),
    "command": (_fs(), 0), "exec": (_fs("-a"), 0), "time": (_fs("-f", "--format", "-o"), 0),
    "nice": (_fs("-n", "--adjustment"), 0), "timeout": (_fs("-k", "--kill-after", "-s"), 1),
    "stdbuf": (_fs("-i", "-o", "-e", "--input", "--output", "--error"), 0),
    "ionice": (_fs("-c", "-n", "-p", "-P", "-u", "--class", "--classdata"), 0),
    "taskset": (_fs(), 1), "chrt": (_fs(), 1), "chroot": (_fs("--userspec", "--groups"), 1),
    "xargs": (_fs("-a", "-d", "-E", "-I", "-L", "-n", "-P", "-s", "--arg-file", "--delimiter",
                  "--eof", "--replace", "--max-lines", "--max-args", "--max-procs"), 0),
}  # fmt: skip
_SHELL_FLAGS = {"sudo": _fs("-s", "-i", "--shell", "--login"), "doas": _fs("-s"),
                "env": _fs("-S", "--split-string")}  # fmt: skip
_RESERVED = _fs("!", "{", "}", "then", "do", "else", "elif", "if", "while", "until", "fi", "done",
                "esac", "in")  # fmt: skip


def _name(w: _Word) -> str:
    base = os.path.basename(w.text) if w.plain else ""
    bare = re.sub(r"[0-9.]+$", "", base)
    return bare if bare in _INTERPRETERS or bare in _SHELLS else base


def _opt(text: str) -> tuple[str, bool]:
    """An option word's name, and whether its value is attached (-cCODE, --eval=CODE)."""
    if text.startswith("--"):
        name, eq, _ = text.partition("=")
        return name, bool(eq)
    return text[:2], len(text) > 2


def _check_command(cmd: _Command, k: int = 0) -> None:
    words = cmd.words
    while k < len(words):
        w = words[k]
        keyword = w.plain and not w.quoted
        if keyword and w.text in ("for", "case", "select", "function"):
            return  # a list of words to loop over or match: data
        if not (keyword and w.text in _RESERVED) and not _ASSIGN.match(w.text):
            break
        k += 1
    if k < len(words):
        _check_from(cmd, k)


def _check_from(cmd: _Command, k: int) -> None:
    words = cmd.words
    w = words[k]
    if w.slots:
        raise _unsafe(w.slots[0], "is the command itself", "name the program in the template "
                      "and pass {v} to it as an argument")  # fmt: skip
    name, rest = _name(w), [s for x in words[k + 1 :] for s in x.slots]
    if name in _WRAPPERS:
        _check_wrapped(cmd, k, name, rest)
    elif name in _SHELLS or name in _INTERPRETERS:
        if _check_program(words, k, name):
            heard = cmd.upstream() + [s for x in cmd.inputs for s in x.slots]
            if heard:
                raise _unsafe(heard[0], f"reaches {name} on its standard input, where it is "
                              "read as its program", "pass it as an argument instead: "
                              + _example(name))  # fmt: skip
    elif name in _EVALUATORS and rest:
        why, _, instead = _EVALUATORS[name].partition("; ")
        raise _unsafe(rest[0], f"is an argument of {name}: {why}", instead or "pass it as data "
                      "to a program or script instead: " + _SHELL_EXAMPLE)  # fmt: skip
    elif (
        name in _TYPED
        and rest
        and any(x.text[:1] in ("-", "+") and set(x.text[1:]) & set("in") for x in words[k + 1 :])
    ):
        raise _unsafe(rest[0], f"is a value of {name} -i/-n, which bash evaluates as code",
                      "drop the -i/-n, or check the value is a number first")  # fmt: skip
    elif name in ("printf", "test", "[", "print"):
        for a, b in zip(words[k + 1 :], words[k + 2 :]):
            if a.plain and a.text in ("-v", "-R") and b.slots:
                raise _unsafe(b.slots[0], f"is a variable name for {name} {a.text}, which bash "
                              "evaluates", "use a name you choose")  # fmt: skip
    elif name == "find":
        _check_find(cmd, k)
    _check_nested(cmd, k)


def _check_wrapped(cmd: _Command, k: int, name: str, rest: list[_Slot]) -> None:
    values, positional = _WRAPPERS[name]
    words, j = cmd.words, k + 1
    while j < len(words):
        t = words[j].text
        if t == "--":
            j += 1
            break
        if name == "env" and _ASSIGN.match(t):
            j += 1
            continue
        if not t.startswith("-") or len(t) == 1:
            break
        opt, attached = _opt(t)
        if opt in _SHELL_FLAGS.get(name, ()) and rest:
            raise _unsafe(rest[0], f"follows {name} {opt}, which runs it through a shell",
                          "pass it as an argument instead: " + _SHELL_EXAMPLE)  # fmt: skip
        j += 2 if opt in values and not attached else 1
    j += positional
    if j >= len(words):
        return
    inner = _name(words[j])
    heard = cmd.upstream() + [s for x in cmd.inputs for s in x.slots]
    if name == "xargs" and heard and (inner in _SHELLS or inner in _INTERPRETERS
                                      or inner in _EVALUATORS):  # fmt: skip
        raise _unsafe(heard[0], f"reaches xargs {inner}, which builds {inner}'s code from it",
                      "pass it as an argument instead: " + _example(inner))  # fmt: skip
    _check_from(cmd, j)


def _check_find(cmd: _Command, k: int) -> None:
    words = cmd.words
    for j in range(k + 1, len(words)):
        if words[j].plain and words[j].text in ("-exec", "-execdir", "-ok", "-okdir"):
            end = next((e for e in range(j + 1, len(words)) if words[e].text in (";", "+")), None)
            _check_from(_Command(words[j + 1 : end], [], cmd.after), 0)


def _check_nested(cmd: _Command, k: int) -> None:
    """``docker exec c sh -c "…"``: a shell with its code option, anywhere in the line."""
    words = cmd.words
    for j in range(k + 1, len(words) - 1):
        name, nxt = _name(words[j]), words[j + 1].text
        spec = _INTERPRETERS.get(name)
        if (name in _SHELLS and re.match(r"^-[a-z]*c[a-z]*$", nxt)) or (
            spec and _opt(nxt)[0] in spec.code
        ):
            _check_program(words, j, name)


def _example(name: str) -> str:
    return _INTERPRETERS[name].example if name in _INTERPRETERS else _SHELL_EXAMPLE


def _check_program(words: list[_Word], k: int, name: str) -> bool:
    """Refuse a placeholder in the program or options of a shell or interpreter.

    Returns True when it reads its program from standard input.
    """
    if name in _SHELLS:
        return _check_shell(words, k, name)
    spec = _INTERPRETERS[name]
    j, program = k + 1, False
    while j < len(words):
        w, t = words[j], words[j].text
        if t in spec.args and w.plain:
            if t != "--":  # R --args: only arguments follow, the program is elsewhere
                return not program and spec.stdin
            j += 1
            break
        if len(t) < 2 or not t.startswith("-"):
            break
        opt, attached = _opt(t)
        if not (opt in spec.code or opt in spec.prog or opt in spec.value):
            if w.slots:
                raise _option(w.slots[0], name)
            j += 1
            continue
        value = w if attached else (words[j + 1] if j + 1 < len(words) else _Word())
        if opt in spec.code or opt in spec.prog:
            program = True
            if value.slots:
                raise _code(value.slots[0], name, opt if opt in spec.code else "")
        elif value.slots and opt not in spec.data:
            raise _option(value.slots[0], name)
        j += 1 if attached else 2
    if program:
        return False  # it came with -c/-e/-f: what follows are arguments
    if j >= len(words):
        return spec.stdin
    if words[j].slots:
        raise _code(words[j].slots[0], name, "") if spec.text else _chooses(words[j], name)
    return words[j].text == "-"


_SHELL_VALUE = _fs("-o", "+o", "-O", "+O", "--rcfile", "--init-file")


def _check_shell(words: list[_Word], k: int, name: str) -> bool:
    code = stdin = ended = False
    j = k + 1
    while j < len(words) and not words[j].slots:
        t = words[j].text
        if t in ("--", "-"):
            ended = True
            j += 1
            break
        if len(t) < 2 or t[0] not in "-+":
            break
        if t in _SHELL_VALUE:
            if j + 1 < len(words) and words[j + 1].slots:
                raise _option(words[j + 1].slots[0], name)
            j += 2
            continue
        if t[1] != "-":  # a cluster such as -ec or -lc
            code |= "c" in t[1:]
            stdin |= "s" in t[1:]
        j += 1
    if j >= len(words):
        return not code
    if words[j].slots:
        if code:
            raise _code(words[j].slots[0], name, "-c")
        if not (stdin and ended):
            raise _chooses(words[j], name)
    return stdin and not code


def _chooses(w: _Word, name: str) -> ConfigError:
    return _unsafe(w.slots[0], f"would choose the program or options {name} runs",
                   f"name the script in the template and pass {{v}} after it: {name} "
                   "script {v}")  # fmt: skip


def _code(slot: _Slot, name: str, opt: str) -> ConfigError:
    where = f"{name} {opt}".strip()
    return _unsafe(slot, f"is inside the code that {where} runs, where it would be parsed again",
                   "pass it as an argument instead: " + _example(name))  # fmt: skip


def _option(slot: _Slot, name: str) -> ConfigError:
    return _unsafe(slot, f"stands where {name} reads its options", f"put it after {name}'s "
                   "program, as an argument")  # fmt: skip


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


def _value(slot: _Slot, fields: dict, where: str) -> str:
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


def check_rows(template: str, table: Table) -> None:
    """Every row fills the template (raises ConfigError naming file, line and field)."""
    for i, item in enumerate(table.items):
        prepare(template, item, i, where=table.where(i))


# -- running ---------------------------------------------------------------------


def _pump(src, fd: int, keep: int, out: list[bytes], tail: bool) -> None:
    size = 0
    for block in iter(lambda: src.read1(65536), b""):
        os.write(fd, block)
        out.append(block)
        size += len(block)
        while tail and size > keep and len(out) > 1:
            size -= len(out.pop(0))
        if not tail and size > keep:
            out[:] = [b"".join(out)[:keep]]
            size = keep
    src.close()


def run_command(
    command: str, workdir: Path, env: dict[str, str] | None = None, shown: str = ""
) -> dict[str, Any]:
    """Run ``command`` with ``sh -c`` in ``workdir``; its output also goes to our fds 1/2.

    ``env`` adds to this process's environment (a :class:`CommandLine`'s
    values travel there); ``shown`` is how errors name the command.
    Returns ``{"returncode": 0, "stdout": text}``; raises CommandFailed otherwise.
    """
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command],
        cwd=workdir,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out: list[bytes] = []
    err: list[bytes] = []
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, 1, STDOUT_KEEP, out, False)),
        threading.Thread(target=_pump, args=(proc.stderr, 2, STDERR_KEEP, err, True)),
    ]
    for t in pumps:
        t.start()
    rc = proc.wait()
    for t in pumps:
        t.join(timeout=1.0)
    if any(t.is_alive() for t in pumps):
        # the command left a process behind that holds its output open (`cmd &`):
        # the task is over, so it is ended (the runner is its subreaper)
        procs.end_leftovers()
        for t in pumps:
            t.join()
    stdout = b"".join(out).decode(errors="replace")
    if rc != 0:
        tail = b"".join(err).decode(errors="replace")
        why = f"signal {-rc}" if rc < 0 else f"status {rc}"
        raise CommandFailed(
            f"command exited with {why}: {shown or command}\n--- end of its stderr ---\n"
            f"{tail.rstrip()}",
            rc,
            tail,
        )
    return {"returncode": 0, "stdout": stdout}
