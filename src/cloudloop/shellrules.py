"""What each command does with its words: refusing values it would parse again.

The shell expands a placeholder once, as data (:mod:`cloudloop.shellsyntax`).
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

How a command is checked: :func:`check_command` skips reserved words and
``NAME=value`` assignments, refuses a placeholder as the command itself, and
looks the command's name up (its basename; ``python3.11`` is ``python``)::

    _WRAPPERS     env, sudo, timeout, xargs…  skip its options, check the command it runs
    _SHELLS       sh, bash, zsh…              walk the options: a placeholder in the code
    _INTERPRETERS python, awk, Rscript…       (-c, -e), the program (-m, -f, the first
                                              operand) or an option is refused; one that
                                              reads its program from stdin must not be fed
                                              a placeholder by a pipe or a < redirection
    _EVALUATORS   eval, ssh, [[, let…         a placeholder anywhere in its arguments
    (others)      declare -i, printf -v, find -exec, and a shell or interpreter with its
                  code option anywhere in the line (docker exec c sh -c "…")

Each :class:`_Interp` says which of a program's options carry code, name a
program, take a value or may take data (``awk -v``), and the example of
passing data that the message offers.

What this cannot know: what a program you name does with an argument. A value
that starts with ``-`` reaches it as that word, and a program that reads
options there (``tar``, ``rm``) takes it as one: write ``--`` before the
placeholder (``rm -- {f}``) or ``--opt={v}``. A template that itself hands a
variable to a nested shell (``x={v}; sh -c "$x"``) runs what it was told to.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import ConfigError
from .shellsyntax import SimpleCommand, Slot, Word, unsafe

_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")


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


def _name(w: Word) -> str:
    base = os.path.basename(w.text) if w.plain else ""
    bare = re.sub(r"[0-9.]+$", "", base)
    return bare if bare in _INTERPRETERS or bare in _SHELLS else base


def _opt(text: str) -> tuple[str, bool]:
    """An option word's name, and whether its value is attached (-cCODE, --eval=CODE)."""
    if text.startswith("--"):
        name, eq, _ = text.partition("=")
        return name, bool(eq)
    return text[:2], len(text) > 2


def check_command(cmd: SimpleCommand, k: int = 0) -> None:
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


def _check_from(cmd: SimpleCommand, k: int) -> None:
    words = cmd.words
    w = words[k]
    if w.slots:
        raise unsafe(w.slots[0], "is the command itself", "name the program in the template "
                      "and pass {v} to it as an argument")  # fmt: skip
    name, rest = _name(w), [s for x in words[k + 1 :] for s in x.slots]
    if name in _WRAPPERS:
        _check_wrapped(cmd, k, name, rest)
    elif name in _SHELLS or name in _INTERPRETERS:
        if _check_program(words, k, name):
            heard = cmd.upstream() + [s for x in cmd.inputs for s in x.slots]
            if heard:
                raise unsafe(heard[0], f"reaches {name} on its standard input, where it is "
                              "read as its program", "pass it as an argument instead: "
                              + _example(name))  # fmt: skip
    elif name in _EVALUATORS and rest:
        why, _, instead = _EVALUATORS[name].partition("; ")
        raise unsafe(rest[0], f"is an argument of {name}: {why}", instead or "pass it as data "
                      "to a program or script instead: " + _SHELL_EXAMPLE)  # fmt: skip
    elif (
        name in _TYPED
        and rest
        and any(x.text[:1] in ("-", "+") and set(x.text[1:]) & set("in") for x in words[k + 1 :])
    ):
        raise unsafe(rest[0], f"is a value of {name} -i/-n, which bash evaluates as code",
                      "drop the -i/-n, or check the value is a number first")  # fmt: skip
    elif name in ("printf", "test", "[", "print"):
        for a, b in zip(words[k + 1 :], words[k + 2 :]):
            if a.plain and a.text in ("-v", "-R") and b.slots:
                raise unsafe(b.slots[0], f"is a variable name for {name} {a.text}, which bash "
                              "evaluates", "use a name you choose")  # fmt: skip
    elif name == "find":
        _check_find(cmd, k)
    _check_nested(cmd, k)


def _check_wrapped(cmd: SimpleCommand, k: int, name: str, rest: list[Slot]) -> None:
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
            raise unsafe(rest[0], f"follows {name} {opt}, which runs it through a shell",
                          "pass it as an argument instead: " + _SHELL_EXAMPLE)  # fmt: skip
        j += 2 if opt in values and not attached else 1
    j += positional
    if j >= len(words):
        return
    inner = _name(words[j])
    heard = cmd.upstream() + [s for x in cmd.inputs for s in x.slots]
    if name == "xargs" and heard and (inner in _SHELLS or inner in _INTERPRETERS
                                      or inner in _EVALUATORS):  # fmt: skip
        raise unsafe(heard[0], f"reaches xargs {inner}, which builds {inner}'s code from it",
                      "pass it as an argument instead: " + _example(inner))  # fmt: skip
    _check_from(cmd, j)


def _check_find(cmd: SimpleCommand, k: int) -> None:
    words = cmd.words
    for j in range(k + 1, len(words)):
        if words[j].plain and words[j].text in ("-exec", "-execdir", "-ok", "-okdir"):
            end = next((e for e in range(j + 1, len(words)) if words[e].text in (";", "+")), None)
            _check_from(SimpleCommand(words[j + 1 : end], [], cmd.after), 0)


def _check_nested(cmd: SimpleCommand, k: int) -> None:
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


def _check_program(words: list[Word], k: int, name: str) -> bool:
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
        value = w if attached else (words[j + 1] if j + 1 < len(words) else Word())
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


def _check_shell(words: list[Word], k: int, name: str) -> bool:
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


def _chooses(w: Word, name: str) -> ConfigError:
    return unsafe(w.slots[0], f"would choose the program or options {name} runs",
                   f"name the script in the template and pass {{v}} after it: {name} "
                   "script {v}")  # fmt: skip


def _code(slot: Slot, name: str, opt: str) -> ConfigError:
    where = f"{name} {opt}".strip()
    return unsafe(slot, f"is inside the code that {where} runs, where it would be parsed again",
                   "pass it as an argument instead: " + _example(name))  # fmt: skip


def _option(slot: Slot, name: str) -> ConfigError:
    return unsafe(slot, f"stands where {name} reads its options", f"put it after {name}'s "
                   "program, as an argument")  # fmt: skip
