"""Reading a command template as ``/bin/sh`` reads it, to place each placeholder.

The lexer gets the template as a list of *pieces*: its characters one by one,
and a :class:`Slot` wherever a ``{field}`` stands. It walks them once, the way
``sh`` does (quotes, backslashes, ``$…`` expansions, operators, redirections,
here-documents, comments), and for each slot it either records the context the
slot expands in or refuses the template::

    pieces    e c h o ␠ " f i t ␠ {alpha} " ␠ > ␠ {name} . t x t
    context                         dquote            word
    expands   ${CLOUDLOOP_VALUE_1}         "${CLOUDLOOP_VALUE_2}"

In a bare word the reference is double-quoted, so the value stays one field,
unsplit and unglobbed; inside ``"…"`` or ``$((…))`` it stands as it is. Where
no expansion would keep the value data, the template is refused:

=========================================  =====================================
accepted                                   refused (the message says what to do)
=========================================  =====================================
unquoted, in a word: ``--a={a}``           inside ``'…'`` or ``$'…'``
inside ``"…"``                             after a backslash, or right after ``$``
inside ``$(…)``, ``<(…)`` (parsed afresh)  inside backticks (use ``$(…)``), ``${…}``
``$((…))``/``((…))``: whole numbers only   in a here-document or its delimiter
a redirection target: ``> {name}.txt``     as the command itself: ``{prog} x``
=========================================  =====================================

(The whole-number rule is applied to each value when a row fills the template,
in :mod:`cloudloop.template`; "the command itself" is one of the rules in
:mod:`cloudloop.shellrules`.)

The lexer also collects every simple command it reads, at every level (the top
and each ``$(…)``/``<(…)``), as a :class:`SimpleCommand`: its words (a slot is
a NUL in a word's text, a character no template can hold), what it reads from
(the targets of ``<`` and ``<<<``), and the pipeline stage before it. Those are
what :mod:`cloudloop.shellrules` checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

_VAR = "CLOUDLOOP_VALUE_{}"
_MARK = "\x00"  # stands for a placeholder in a word's text (a NUL can never be in a template)


@dataclass(eq=False)
class Slot:
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


def unsafe(slot: Slot, why: str, instead: str) -> ConfigError:
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
class Word:
    text: str = ""
    slots: list = field(default_factory=list)
    plain: bool = True  # nothing expands in it: text is what the program gets
    quoted: bool = False


@dataclass(eq=False)
class SimpleCommand:
    words: list = field(default_factory=list)
    inputs: list = field(default_factory=list)  # targets of <, <<< (what it reads)
    after: SimpleCommand | None = None  # the pipeline stage before it

    def upstream(self) -> list[Slot]:
        c, out = self.after, []
        while c is not None:
            out += [s for w in c.words + c.inputs for s in w.slots]
            c = c.after
        return out


class Lexer:
    """Reads the template as /bin/sh would, deciding each placeholder's context."""

    def __init__(self, stream: list[Any]):
        self.s = stream
        self.i = 0
        self.commands: list[SimpleCommand] = []
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

    def script(self, nested: bool) -> list[Slot]:
        b = _Builder(self)
        depth = 0
        while self.i < len(self.s):
            c = self.take()
            if isinstance(c, Slot):
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
                    if isinstance(s, Slot):
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
            if isinstance(n, Slot):
                raise unsafe(n, *_PLACES["backslash"])
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

    def single(self, w: Word, ansi: bool = False) -> None:
        w.quoted = True
        while True:
            c = self.take("' quote")
            if isinstance(c, Slot):
                raise unsafe(c, *_PLACES["squote"])
            if c == "'":
                return
            if ansi and c == "\\":
                c = self.take("$' quote")
                if isinstance(c, Slot):
                    raise unsafe(c, *_PLACES["squote"])
            w.text += c

    def double(self, w: Word, b: _Builder) -> None:
        w.quoted = True
        while True:
            c = self.take('" quote')
            if isinstance(c, Slot):
                c.ctx = "dquote"
                b.add(w, [c])
            elif c == '"':
                return
            elif c == "\\":
                n = self.peek()
                if isinstance(n, Slot):
                    raise unsafe(n, *_PLACES["backslash"])
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

    def dollar(self, w: Word, b: _Builder, quoted: bool) -> None:
        n = self.peek()
        if isinstance(n, Slot):
            raise unsafe(n, *_PLACES["dollar"])
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

    def arith(self) -> list[Slot]:
        depth, slots = 0, []
        while True:
            c = self.take("$(( or ((")
            if isinstance(c, Slot):
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
            if isinstance(c, Slot):
                raise unsafe(c, *_PLACES["param"])
            if c == "\\":
                c = self.take("${")
                if isinstance(c, Slot):
                    raise unsafe(c, *_PLACES["param"])
            depth += {"{": 1, "}": -1}.get(c, 0)

    def backtick(self, w: Word) -> None:
        w.plain = False
        while True:
            c = self.take("` backtick")
            if isinstance(c, Slot):
                raise unsafe(c, *_PLACES["backtick"])
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
                    if isinstance(s, Slot):
                        raise unsafe(s, *_PLACES["heredoc"])
                text = "".join(line)
                if (text.lstrip("\t") if strip else text) == delim:
                    break
        self.heredocs = []


_REDIRECTS = {"<", "<<", "<<-", "<<<", "<&", "<>", ">", ">>", ">&", ">|", "&>", "&>>"}


class _Builder:
    """The words and commands of one level of the script (top, or inside $( … ))."""

    def __init__(self, lexer: Lexer):
        self.lx = lexer
        self.cmd = SimpleCommand()
        lexer.commands.append(self.cmd)
        self.word: Word | None = None
        self.redir = ""
        self.slots: list[Slot] = []

    def w(self) -> Word:
        if self.word is None:
            self.word = Word()
        return self.word

    def add(self, w: Word, slots: list[Slot]) -> None:
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
                raise unsafe(w.slots[0], *_PLACES["heredoc"])
            self.lx.heredocs.append((w.text, self.redir == "<<-"))
        elif self.redir:
            if self.redir[0] == "<":
                self.cmd.inputs.append(w)
        else:
            self.cmd.words.append(w)
        self.redir = ""

    def end_command(self, pipe: bool = False) -> None:
        self.end_word()
        self.cmd = SimpleCommand(after=self.cmd if pipe else None)
        self.lx.commands.append(self.cmd)
