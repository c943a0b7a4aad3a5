"""Every command printed in README.md and docs/*.md names a real module and only options its parser accepts.

A command is ``python -m MODULE ARGS``, ``python PATH.py ARGS``, ``torchrun ... -m MODULE ARGS`` or the
``experiments-paper`` console script, in a fenced code block (one per line, backslash continuations joined)
or in inline code (which may wrap over lines). The module's own ``argparse`` parser is captured by running
the module until it calls ``parse_args`` (nothing else runs); the command's arguments are then parsed by it,
so an unknown flag, a bad choice or a malformed value fails here. Placeholders stay as written (``DIR``,
``OUT``); ``[--flag]`` is an optional flag, ``{a,b}`` and ``a|b`` are alternatives, each checked; a command
holding ``...`` is checked for its module and flags only. A module that needs an optional peer library
(``bash bench/setup.sh``) that is not installed is checked against the option strings in its source.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import itertools
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages the docs map links to that other work adds; a link to one of these may not resolve yet.
FUTURE_PAGES = {"solvers.md", "stiff.md", "events.md", "attack_checks.md", "evaluation.md", "paper.md",
                "mechanism.md"}
CONSOLE_SCRIPTS = {"experiments-paper": "experiments.paper"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&"}
COMMAND_START = re.compile(r"(?:^|[\s;(&|])((?:python3?|torchrun|experiments-paper)\s.*)")


@dataclass(frozen=True)
class Command:
    page: str
    text: str

    def __str__(self) -> str:
        return f"{self.page}: {self.text}"


def _inline_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks, whitespace (line wraps) collapsed."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def _block_lines(text: str) -> list[str]:
    lines = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#\s.*$", "", line).strip()


def _runs_something(text: str) -> bool:
    """Not ``python -c`` or ``python -`` (stdin); a ``torchrun`` fragment ("under ``torchrun
    --nproc_per_node K``") only with -m."""
    if re.match(r"python3?\s+-[c]?(\s|$)", text):  # python -c CODE, python - (a script on stdin)
        return False
    return not text.startswith("torchrun") or bool(re.search(r"\s(-m|--module)\s", text))


def find_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for candidate in [*_block_lines(text), *_inline_spans(text)]:
            match = COMMAND_START.search(_strip_comment(candidate))
            if match and _runs_something(match.group(1)):
                commands.append(Command(page.relative_to(ROOT).as_posix(), match.group(1)))
    return commands


def _alternatives(token: str) -> list[str]:
    """``{a,b}`` and ``a|b`` as alternatives."""
    braces = re.fullmatch(r"(.*)\{([^{}]+)\}(.*)", token)
    if braces and "," in braces.group(2):
        return [braces.group(1) + choice + braces.group(3) for choice in braces.group(2).split(",")]
    if "|" in token and not token.startswith("-"):
        return token.split("|")
    return [token]


@dataclass
class Target:
    """What a command runs: a module (or script path) and its argument tokens."""

    module: str | None
    path: Path | None
    args: list[str]


def parse_command(command: Command) -> Target:
    tokens = shlex.split(re.sub(r"\[(-[^\]]*)\]", r"\1", command.text))  # [--flag VALUE]: optional
    for index, token in enumerate(tokens):  # the command ends at a pipe, a redirection or a next command
        if token in SHELL_OPERATORS or re.match(r"^\d?>", token):
            tokens = tokens[:index]
            break
    program = tokens.pop(0)
    if program in CONSOLE_SCRIPTS:
        return Target(CONSOLE_SCRIPTS[program], None, tokens)
    if program == "torchrun":
        index = tokens.index("-m") if "-m" in tokens else tokens.index("--module")
        launcher, tokens = tokens[:index], tokens[index + 1:]
        _check_torchrun(launcher, tokens[0], command)
        return Target(tokens[0], None, tokens[1:])
    if tokens[0] == "-m":
        return Target(tokens[1], None, tokens[2:])
    return Target(None, ROOT / tokens[0], tokens[1:])


def _check_torchrun(launcher: list[str], module: str, command: Command) -> None:
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    _fail_on_error(parser, command)
    parser.parse_args([*launcher, "-m", module])


class _Captured(BaseException):
    """Raised from ``parse_args`` to hand the parser over (a BaseException: no command catches it)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def _capture(run) -> argparse.ArgumentParser | None:
    originals = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args

    def grab(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = grab
    argparse.ArgumentParser.parse_known_args = grab
    try:
        run()
    except _Captured as captured:
        return captured.parser
    except SystemExit:  # a module that exits before parsing takes no options
        return None
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = originals
    return None


def _source(target: Target) -> Path:
    if target.path is not None:
        return target.path
    spec = importlib.util.find_spec(target.module)
    assert spec is not None and spec.origin, f"no module {target.module}"
    if spec.submodule_search_locations:  # a package run as __main__
        return Path(spec.submodule_search_locations[0]) / "__main__.py"
    return Path(spec.origin)


def _source_options(path: Path) -> set[str]:
    """Option strings of every ``add_argument`` call in a module's source (a module not importable here)."""
    options = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            options |= {arg.value for arg in node.args if isinstance(arg, ast.Constant)
                        and isinstance(arg.value, str) and arg.value.startswith("-")}
    return options | {"-h", "--help"}


def _has_parser(source: Path) -> bool:
    """Whether the module (for a package's ``__main__``, the package) parses options; one that does not is
    never run here (it would run its whole job)."""
    files = sorted(source.parent.glob("*.py")) if source.name == "__main__.py" else [source]
    return any("parse_args" in path.read_text(encoding="utf-8") for path in files)


def _parser_for(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> tuple[argparse.ArgumentParser | None, str]:
    """The module's parser, or None with the reason (a missing optional peer: its source is checked)."""
    source = _source(target)
    if not _has_parser(source):
        return None, ""
    monkeypatch.setattr(sys, "argv", [str(source), "--help"])
    if target.path is not None:
        monkeypatch.syspath_prepend(str(target.path.parent))
    try:  # the file run as __main__ (run_module would re-import a module the tests already imported)
        return _capture(lambda: runpy.run_path(str(source), run_name="__main__")), ""
    except ModuleNotFoundError as error:
        peers = {"torchdiffeq", "torchode", "torchattacks", "foolbox", "autoattack"}
        if error.name not in peers:
            raise
        return None, f"needs {error.name}"


def _fail_on_error(parser: argparse.ArgumentParser, command: Command) -> None:
    def error(message: str):
        raise AssertionError(f"{command}\n  -> {message}")

    parser.allow_abbrev = False  # the docs spell every option out
    parser.error = error  # type: ignore[method-assign]
    parser.exit = lambda status=0, message=None: error(message or f"exit {status}")  # type: ignore


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if re.match(r"^--?[A-Za-z]", a)]


COMMANDS = find_commands()


def test_the_pages_hold_commands():
    modules = {parse_command(c).module for c in COMMANDS}
    assert {"experiments.robustness", "experiments.train", "experiments.evaluate", "experiments.paper",
            "experiments.bounds", "pytest"} <= modules


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.page}:{c.text[:60]}" for c in COMMANDS])
def test_command_names_a_module_and_its_flags(command: Command, monkeypatch: pytest.MonkeyPatch):
    target = parse_command(command)
    if target.module in ("pytest", "tests.run"):  # pytest's options (tests.run passes them to pytest)
        for path in [a for a in target.args if a.startswith("tests/")]:
            assert (ROOT / path.split("::")[0]).exists(), f"{command}: no {path}"
        return
    source = _source(target)
    assert source.is_file(), f"{command}: no module {target.module or target.path}"
    parser, why = _parser_for(target, monkeypatch)
    args = [a for a in target.args if a not in ("--help", "-h")]
    if parser is None:
        if why:
            unknown = set(_flags(args)) - _source_options(source)
            assert not unknown, f"{command}: {source.name} has no option {sorted(unknown)}"
        else:
            assert not args, f"{command}: the module takes no options"
        return
    _fail_on_error(parser, command)
    if not args:  # the module named in prose, or with --help
        return
    if "..." in args:
        known = {s for action in parser._actions for s in action.option_strings}
        unknown = set(_flags(args)) - known
        assert not unknown, f"{command}: no option {sorted(unknown)}"
        return
    for choice in itertools.product(*[_alternatives(a) for a in args]):
        parser.parse_args(list(choice))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_resolve(page: Path):
    """Relative links point to files in the repository (or to a page the docs map announces)."""
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path = (page.parent / target).resolve()
        assert path.exists() or path.name in FUTURE_PAGES, f"{page.name}: broken link {target}"


def test_no_machine_paths():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for marker in ("/work/", "/home/", "/path/to", "/tmp/"):
            assert marker not in text, f"{page.name} holds a machine path ({marker})"


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    block = text.split("<!-- ci:commands -->")[1].split("<!-- /ci:commands -->")[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("```")]
    assert len(commands) == 2 and commands[1] == "python -m tests.run -q"  # what .ci/run executes
    assert 'python -m tests.run -q -m "not slow"' in text
    for page in re.findall(r"\]\((docs/[^)#]+\.md)\)", text):  # the docs map
        assert (ROOT / page).is_file() or Path(page).name in FUTURE_PAGES, page
