"""Command tasks: a value from the items file is data, never code.

Every table below is one row per case. The hostile values run for real (local
workers, an sqlite backend) through every template the scheme accepts; each
must reach the program as exactly its bytes, and nothing it spells may run
(no PWNED file anywhere, neither in the task's directory nor at an absolute
path). Templates the scheme cannot make safe are refused before anything is
created; bad items files are one-line errors naming file, line and column.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import cloudloop as cl
from cloudloop.cli import _ship
from cloudloop.commands import build_template, compile_template, prepare, read_table, render
from cloudloop.errors import CloudloopError, ConfigError

PY = shlex.quote(sys.executable)
ECHO_ARG = "import sys; sys.stdout.write(sys.argv[1])"

# (id, value); {canary} becomes an absolute path under the test's directory
HOSTILE = [
    ("single-quote", "it's"),
    ("double-quote", 'say "hi"'),
    ("command-substitution", "$(touch PWNED)"),
    ("command-substitution-absolute", "$(touch {canary})"),
    ("backticks", "`touch PWNED`"),
    ("semicolon", "1; touch PWNED"),
    ("and", "1 && touch {canary}"),
    ("pipe", "1 | touch PWNED"),
    ("newline", "1\ntouch PWNED"),
    ("leading-dash", "-n"),
    ("glob", "*"),
    ("break-out-of-single-quotes", "x'; touch {canary}; echo '"),
    ("break-out-of-double-quotes", 'x"; touch {canary}; echo "'),
    ("backslashes", "a\\b\\"),
    ("shell-variables", "$HOME ${PATH} $1"),
    ("arithmetic", "$((1+1))"),
    ("spaces", "  two  spaces  "),
    ("unicode", "α β ü"),
    ("empty", ""),
    ("braces", "{v} {{x}}"),
    ("redirect", "> {canary}"),
]

# (id, template, what the program must print for a value v)
ACCEPTED = [
    ("unquoted-word", "printf '%s' {v}", lambda v: v),
    ("double-quoted", "printf '%s' \"<{v}>\"", lambda v: f"<{v}>"),
    ("nested-shell-positional", "sh -c 'printf %s \"$1\"' sh {v}", lambda v: v),
    ("inside-command-substitution", "printf '%s' \"$(printf '%s' {v})\"", lambda v: v),
    ("assignment-prefix", "V={v} sh -c 'printf %s \"$V\"'", lambda v: v),
    ("python-argv", f"{PY} -c '{ECHO_ARG}' {{v}}", lambda v: v),
    ("multi-word-form", build_template([sys.executable, "-c", ECHO_ARG, "{v}"]), lambda v: v),
    ("redirect-target", "printf '%s' {v} > \"$CLOUDLOOP_OUTPUT/x\" && cat out/x", lambda v: v),
    ("option-value", "printf '%s%s' --a= {v}", lambda v: "--a=" + v),
]


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every accepted template over every hostile value, on real local workers."""
    root = tmp_path_factory.mktemp("hostile")
    canary = root / "PWNED-absolute"
    rows = [{"v": v.replace("{canary}", str(canary))} for _, v in HOSTILE]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        ex = cl.Executor(backend="sqlite://" + str(root / "backend"), workers=2, lease=3,
                         heartbeat=1)  # fmt: skip
        try:
            # each task then fails if a relative PWNED appeared in its own directory
            jobs = {tid: ex.command_job(t + "; test ! -e PWNED", rows) for tid, t, _ in ACCEPTED}
            results = {tid: job.results(return_exceptions=True) for tid, job in jobs.items()}
        finally:
            ex.shutdown(wait=False, cancel_futures=True)
            if ex._pool is not None:
                ex._pool.stop(timeout=5)
    return root, rows, results


@pytest.mark.parametrize("tid,template,expect", ACCEPTED, ids=[a[0] for a in ACCEPTED])
@pytest.mark.parametrize("n", range(len(HOSTILE)), ids=[h[0] for h in HOSTILE])
def test_hostile_value_arrives_as_exact_data(ran, n, tid, template, expect):
    root, rows, results = ran
    got = results[tid][n]
    assert not isinstance(got, BaseException), got
    assert got["stdout"] == expect(rows[n]["v"])


def test_no_hostile_value_ran(ran):
    root, _, results = ran
    assert results and not list(root.rglob("PWNED*"))


# (id, template, part of the message)
REFUSED = [
    ("value-in-single-quotes", "echo '{v}'", "inside '…' quotes"),
    ("nested-shell-double-quotes", 'sh -c "echo {v}"', "code that sh -c runs"),
    ("nested-shell-single-quotes", "sh -c 'echo {v}'", "inside '…' quotes"),
    ("bash-lc", 'bash -lc "echo {v}"', "code that bash -c runs"),
    ("sh-c-bare-word", "sh -c {v}", "code that sh -c runs"),
    ("eval", "eval echo {v}", "argument of eval"),
    ("ssh", "ssh host echo {v}", "remote shell"),
    ("su", "su bob -c {v}", "argument of su"),
    ("watch", "watch echo {v}", "argument of watch"),
    ("trap", "trap {v} EXIT", "argument of trap"),
    ("source", ". {v}", "argument of ."),
    ("xargs-sh-c", 'xargs sh -c "echo {v}"', "code that sh -c runs"),
    ("pipe-into-xargs-sh", "echo {v} | xargs sh", "xargs sh"),
    ("pipe-into-sh", "echo {v} | sh", "standard input"),
    ("pipe-into-python", "printf %s {v} | python3", "standard input"),
    ("redirect-into-sh", "sh < {v}", "standard input"),
    ("here-string-into-bash", "bash <<< {v}", "standard input"),
    ("python-c", 'python3 -c "print({v})"', "code that python -c runs"),
    ("python-c-attached", "python3 -c{v}", "code that python -c runs"),
    ("python-W-then-c", 'python3 -W ignore -c "print({v})"', "code that python -c runs"),
    ("perl-e", 'perl -e "print {v}"', "code that perl -e runs"),
    ("node-eval", 'node --eval="{v}"', "code that node --eval runs"),
    ("Rscript-e", 'Rscript -e "print({v})"', "code that Rscript -e runs"),
    ("awk-program", 'awk "BEGIN {{ print {v} }}"', "code that awk runs"),
    ("sed-script", 'sed "s/x/{v}/" f.txt', "code that sed runs"),
    ("env-wrapper", 'env A=1 sh -c "echo {v}"', "code that sh -c runs"),
    ("env-split-string", 'env -S "{v}"', "env -S"),
    ("sudo-wrapper", 'sudo -u bob sh -c "echo {v}"', "code that sh -c runs"),
    ("sudo-shell", "sudo -s echo {v}", "sudo -s"),
    ("timeout-wrapper", 'timeout 5 bash -c "echo {v}"', "code that bash -c runs"),
    ("find-exec", 'find . -exec sh -c "echo {v}" {{}} \\;', "code that sh -c runs"),
    ("docker-exec", 'docker exec box sh -c "echo {v}"', "code that sh -c runs"),
    ("in-substitution-nested-shell", 'echo "$(sh -c "echo {v}")"', "code that sh -c runs"),
    ("value-chooses-script", "python3 {v}", "would choose the program"),
    ("value-as-shell-option", "sh {v} script.sh", "would choose the program"),
    ("value-as-python-option", "python3 {v} fit.py", "would choose the program or options"),
    ("value-as-python-flag-value", "python3 -W {v} fit.py", "reads its options"),
    ("value-is-the-command", "{v} --help", "is the command itself"),
    ("value-is-the-command-after-env", "env {v}", "is the command itself"),
    ("backticks", "echo `echo {v}`", "use $(…) instead"),
    ("after-backslash", "echo \\{v}", "follows a backslash"),
    ("after-dollar", "echo ${v}", "follows a '$'"),
    ("in-parameter-expansion", "echo ${{x:-{v}}}", "inside ${…}"),
    ("ansi-c-quotes", "echo $'{v}'", "inside '…' quotes"),
    ("here-document", "cat <<EOF\n{v}\nEOF", "here-document"),
    ("here-document-delimiter", "cat <<{v}\nx\n", "here-document"),
    ("bash-double-brackets", "[[ {v} -eq 1 ]]", "use [ … ]"),
    ("bash-let", "let x={v}", "argument of let"),
    ("bash-declare-i", "declare -i n={v}", "declare -i"),
    ("bash-read-name", "read {v}", "argument of read"),
    ("printf-v-name", "printf -v {v} %s x", "variable name"),
    ("unclosed-quote", 'echo "{v}', "unclosed"),
    ("unclosed-substitution", "echo $(echo {v}", "unclosed"),
    ("malformed-braces", "echo {v", "malformed"),
]


@pytest.mark.parametrize("tid,template,why", REFUSED, ids=[r[0] for r in REFUSED])
def test_unsafe_template_is_refused_with_what_to_write(tid, template, why):
    with pytest.raises(ConfigError) as e:
        compile_template(template)
    message = str(e.value)
    assert why in message and "\n" not in message
    assert "; " in message or "close it" in message  # and what to do about it


# templates that must keep working (compile only; the real runs are above)
SAFE = [
    ("double-quoted-inside-text", 'echo "x={v}"'),
    ("after-a-closed-single-quote", "echo 'x='{v}"),
    ("script-with-arguments", "python3 fit.py --alpha {v} --seed {seed}"),
    ("r-example", 'Rscript fit.R {n} {noise} {seed} "$CLOUDLOOP_OUTPUT"'),
    ("chunks-example", "tail -c +$(({start} + 1)) {path} | head -c $(({end} - {start})) | wc -l"),
    ("arithmetic-command", "((n = {index} * 2))"),
    ("pipe-between-tools", "echo {v} | tr a b | sort"),
    ("for-loop-words", 'for x in {v} {w}; do echo "$x"; done'),
    ("case-subject", "case {v} in a) echo A;; *) echo other;; esac"),
    ("awk-v-data", "awk -v v={v} 'BEGIN {{ print v }}'"),
    ("awk-program-then-file", "awk '{{ print $1 }}' {path}"),
    ("sed-script-then-file", "sed 's/a/b/' {path}"),
    ("wrapped-script", "timeout 60 nice -n 5 env A=1 python3 fit.py {v}"),
    ("sh-s-arguments", "sh -s -- {v} < script.sh"),
    ("redirect-to-value-name", "echo {v} > {name}.txt 2>&1"),
    ("here-document-without-fields", "cat <<'EOF'\n$x 'y'\nEOF\necho {v}"),
    ("comment", "echo ok # {v}"),
    ("test-brackets", "[ {v} = x ] && echo same"),
    ("process-substitution", "diff <(echo {a}) <(echo {b})"),
    ("nested-substitution", 'echo "$(basename "$(dirname {path})")"'),
    ("xargs-of-a-tool", "echo {v} | xargs -n 1 echo"),
    ("find-exec-tool", "find {dir} -name '*.csv' -exec wc -l {{}} +"),
    ("format-spec", "echo {alpha:.3f} {n:04d}"),
    ("literal-braces", "echo {{}} {v} '{{x}}'"),
    ("builtin-fields", "echo {index} {seed} {job}"),
    ("local-assignment", 'f() {{ local y={v}; echo "$y"; }}; f'),
]


@pytest.mark.parametrize("tid,template", SAFE, ids=[s[0] for s in SAFE])
def test_safe_template_is_accepted(tid, template):
    script = compile_template(template)
    assert "{v}" not in script.text and "CLOUDLOOP_VALUE_" in script.text


# (id, template, row, what the log shows)
SHOWN = [
    ("plain", "fit --alpha {a}", {"a": "0.5"}, "fit --alpha 0.5"),
    ("quoted-for-people", "echo {a}", {"a": "it's $x"}, "echo 'it'\"'\"'s $x'"),
    ("inside-double-quotes", 'echo "a={a}"', {"a": 'say "$x"'}, 'echo "a=say \\"\\$x\\""'),
    ("format-spec-on-csv-text", "fit {a:.2f} {n:03d}", {"a": "0.5", "n": "7"}, "fit 0.50 007"),
    ("json-number", "fit {a}", {"a": 2}, "fit 2"),
]


@pytest.mark.parametrize("tid,template,row,shown", SHOWN, ids=[s[0] for s in SHOWN])
def test_the_log_shows_values_filled_in(tid, template, row, shown):
    assert render(template, row, 0) == shown
    line = prepare(template, row, 0)
    assert line.shown == shown and set(line.env.values()) <= {str(v) for v in row.values()} | {
        "0.50",
        "007",
    }


# (id, template, row, part of the message)
BAD_ROWS = [
    ("nul-byte", "echo {v}", {"v": "a\x00b"}, "field 'v': the value holds a NUL byte"),
    ("null", "echo {v}", {"v": None}, "field 'v'"),
    ("missing-field", "echo {w}", {"v": "1"}, "no field 'w'"),
    ("arithmetic-needs-a-number", "echo $(({v} + 1))", {"v": "a[$(touch x)]"}, "whole number"),
    ("number-spec-on-text", "echo {v:.2f}", {"v": "abc"}, "not the number"),
]


@pytest.mark.parametrize("tid,template,row,why", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_bad_row_is_refused_naming_the_field(tid, template, row, why):
    with pytest.raises(ConfigError, match="task 3") as e:
        prepare(template, row, 3)
    assert why in str(e.value) and "None" not in str(e.value)


# -- the command line: items files, refusals, nothing left behind ---------------


def cli(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, "-m", "cloudloop", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def results(job: str, cwd) -> list[dict]:
    out = cli("results", job, "--backend", f"sqlite://{cwd}/backend", cwd=cwd).stdout
    return [json.loads(x) for x in out.splitlines()]


def test_hostile_csv_through_the_cli(tmp_path):
    canary = tmp_path / "PWNED-absolute"
    values = [v.replace("{canary}", str(canary)) for _, v in HOSTILE]
    import csv

    with open(tmp_path / "hostile.csv", "w", newline="", encoding="utf-8-sig") as f:  # a BOM
        w = csv.writer(f)
        w.writerow(["v", "other"])
        w.writerows([v, "x"] for v in values)
    (tmp_path / "show.py").write_text(ECHO_ARG)
    backend = ["--backend", f"sqlite://{tmp_path}/backend", "--workers", "2", "--quiet"]
    for command in (["python3", "show.py", "{v}"], ["printf '%s' {v} | cat"]):
        proc = cli("run", "--items", "hostile.csv", *backend, "--", *command, cwd=tmp_path)
        got = [r["value"]["stdout"] for r in results(proc.stdout.strip(), tmp_path)]
        assert got == values
    assert "shipping to each task: show.py" in proc.stderr or "show.py" not in command
    assert not list(tmp_path.rglob("PWNED*"))


# (id, file name, content, part of the one-line error)
BAD_FILES = [
    ("empty-csv", "t.csv", b"", "is empty"),
    ("header-only", "t.csv", b"v,w\n", "has no rows"),
    ("missing-cell", "t.csv", b"v,w\n1,2\n3\n", "t.csv line 3: no cell for column 'w'"),
    ("missing-cell-after-a-multi-line-cell", "t.csv", b'v,w\n1,"a\nb"\n3\n', "t.csv line 4"),
    ("extra-cell", "t.csv", b"v\n1\n2,3\n", "t.csv line 3: 2 cells but the header names 1"),
    ("duplicate-column", "t.csv", b"v,v\n1,2\n", "column 'v' is named twice"),
    ("non-utf8", "t.csv", b"v\ncaf\xe9\n", "t.csv:2: not UTF-8"),
    (
        "nul-in-a-cell",
        "t.csv",
        b"v\nok\na\x00b\n",
        "t.csv line 3, field 'v': the value holds a NUL",
    ),
    ("missing-field", "t.csv", b"w\n1\n", "t.csv line 2 has no field 'v'"),
    ("bad-jsonl", "t.jsonl", b'{"v": 1}\n{"v": \n', "t.jsonl:2: not valid JSON"),
    ("bad-json", "t.json", b'[{"v": 1},\n {"v": }]', "t.json:2:8: not valid JSON"),
    ("json-not-a-list", "t.json", b'{"v": 1}', "holds a JSON dict, not a list"),
    ("empty-json-list", "t.json", b"[]", "has no rows"),
    ("json-null", "t.json", b'[{"v": 1}, {"v": null}]', "t.json item 2, field 'v'"),
    ("nul-in-jsonl", "t.jsonl", b'{"v": "a\\u0000b"}\n', "t.jsonl line 1, field 'v'"),
    ("unknown-suffix", "t.txt", b"v\n1\n", "use .csv, .jsonl or .json"),
    ("no-such-file", "missing.csv", None, "does not exist"),
]


@pytest.mark.parametrize("tid,name,content,why", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_items_file_is_one_line_and_leaves_nothing(tmp_path, tid, name, content, why):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    _refused(tmp_path, ["--items", name, "--", "echo", "{v}"], why)


CLI_REFUSED = [
    ("single-quoted-script", ["echo '{v}'"], "inside '…' quotes"),
    ("nested-shell-script", ['sh -c "echo {v}"'], "code that sh -c runs"),
    ("nested-shell-words", ["sh", "-c", "echo {v}"], "code that sh -c runs"),
    ("missing-files-glob", ["--files", "nothing*.txt", "echo", "{v}"], "matches no file"),
]


@pytest.mark.parametrize("tid,command,why", CLI_REFUSED, ids=[c[0] for c in CLI_REFUSED])
def test_refused_run_is_one_line_and_leaves_nothing(tmp_path, tid, command, why):
    (tmp_path / "t.csv").write_text("v\n$(touch PWNED)\n")
    opts = command[:2] if command[0] == "--files" else []
    _refused(tmp_path, ["--items", "t.csv", *opts, "--", *command[len(opts) :]], why)


def _refused(tmp_path, args, why):
    proc = cli("run", "--backend", f"sqlite://{tmp_path}/backend", "--workers", "1", *args,
               cwd=tmp_path, check=False)  # fmt: skip
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert err.startswith("cloudloop: error: ") and "\n" not in err and "Traceback" not in err
    assert why in err
    assert not (tmp_path / "backend").exists()  # no job, no backend: nothing half-made
    assert not list(tmp_path.rglob("PWNED*"))


def test_bom_is_not_part_of_the_first_column(tmp_path):
    (tmp_path / "t.csv").write_bytes("\ufeffalpha,beta\n1,2\n".encode())
    assert read_table(tmp_path / "t.csv").items == [{"alpha": "1", "beta": "2"}]


# -- shipping: only files the command names in this directory, or --files -----------


@pytest.fixture
def project(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".netrc").write_text("machine x login me password secret\n")
    (home / "x.txt").write_text("outside\n")
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / ".ssh").mkdir()
    for name in ("fit.py", "src/fit.R", "x.txt", "netrc", ".env", ".ssh/id_rsa", "my data.txt",
                 "[x].txt", "my_data.txt"):  # fmt: skip
        (proj / name).write_text(name)
    (proj / "link.txt").symlink_to(home / ".netrc")
    monkeypatch.chdir(proj)
    monkeypatch.setenv("HOME", str(home))
    return proj, home


# (id, command words, --files, shipped names)
SHIPPING = [
    ("script", ["python3", "fit.py", "{v}"], [], {"fit.py"}),
    ("script-in-a-directory", ["Rscript", "src/fit.R"], [], {"src/fit.R"}),
    ("netrc-by-absolute-path", ["curl", "--netrc-file", "{home}/.netrc", "u"], [], set()),
    ("netrc-by-tilde", ["curl", "--netrc-file", "~/.netrc", "u"], [], set()),
    ("option-with-attached-file", ["curl", "--netrc-file=netrc", "u"], [], set()),
    ("dot-file-here", ["cat", ".env"], [], set()),
    ("file-in-a-dot-directory", ["cat", ".ssh/id_rsa"], [], set()),
    ("parent-directory", ["cat", "../home/x.txt"], [], set()),
    ("symlink-leading-out", ["cat", "link.txt"], [], set()),
    ("absolute-path-inside", ["cat", "{proj}/fit.py"], [], set()),
    ("a-directory", ["ls", "src"], [], set()),
    ("script-form-words", ["python3 fit.py {v} < x.txt > out.txt"], [], {"fit.py", "x.txt"}),
    ("name-with-a-space", ["cat", "my data.txt"], [], {"my data.txt"}),
    ("files-dot-file", ["true"], [".env"], {".env"}),
    ("files-outside", ["true"], ["{home}/x.txt"], {"x.txt"}),
    ("files-with-a-space", ["true"], ["my data.txt"], {"my data.txt"}),
    ("files-name-with-brackets", ["true"], ["[x].txt"], {"[x].txt"}),
    ("files-glob", ["true"], ["src/*.R"], {"src/fit.R"}),
    ("same-file-twice", ["cat", "fit.py"], ["fit.py", "./fit.py"], {"fit.py"}),
]


@pytest.mark.parametrize("tid,words,files,shipped", SHIPPING, ids=[s[0] for s in SHIPPING])
def test_what_is_shipped(project, tid, words, files, shipped):
    proj, home = project

    def fill(xs):
        return [x.replace("{home}", str(home)).replace("{proj}", str(proj)) for x in xs]

    words = compile_template(build_template(fill(words))).words
    if isinstance(shipped, str):  # an error, in one line that says what to do
        with pytest.raises(CloudloopError, match=re.escape(shipped)):
            _ship(words, fill(files))
    else:
        assert set(_ship(words, fill(files))) == shipped


def test_two_files_for_one_name_is_an_error_naming_both(project):
    proj, home = project
    with pytest.raises(CloudloopError, match="'x.txt'") as e:
        _ship(compile_template("cat x.txt").words, [str(home / "x.txt")])
    assert str(home / "x.txt") in str(e.value) and "'x.txt' and" in str(e.value)


def test_netrc_is_not_uploaded_by_a_real_run(project):
    proj, home = project
    (proj / "t.csv").write_text("v\n1\n")
    backend = f"sqlite://{proj}/backend"
    env_home = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "cloudloop", "run", "--items", "t.csv", "--backend", backend,
         "--workers", "1", "--quiet", "--files", "my_data.txt", "--",
         "sh", "-c", "ls -A; cat my_data.txt", "sh", "--netrc-file", str(home / ".netrc"),
         "--config", ".env", "fit.py", "{v}"],
        cwd=proj, capture_output=True, text=True, timeout=120, env=env_home,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stdout = results(proc.stdout.strip(), proj)[0]["value"]["stdout"]
    assert sorted(stdout.split()) == ["fit.py", "my_data.txt", "my_data.txt", "out"]
    assert "secret" not in stdout


def test_command_job_refuses_an_unsafe_template_before_any_job_exists(url):
    import cloudloop as cl
    from cloudloop.backends import open_backend

    with cl.Executor(backend=url, workers=0) as ex, pytest.raises(cl.ConfigError, match="quote"):
        ex.command_job("echo '{v}'", [{"v": "$(touch PWNED)"}])
    assert open_backend(url).store.list("index/") == []
