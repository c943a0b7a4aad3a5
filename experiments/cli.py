"""Command-line conventions shared by every ``experiments`` command.

* ``--help`` shows every option's full description and its default (:func:`make_parser`); a bad option is
  one line too (:class:`ArgumentParser`).
* An error is one line on stderr naming what went wrong and what to do; exit status 2 for usage and data
  errors (bad option values, missing or corrupt data, an existing run that would be overwritten, a resume
  with another configuration, a full disk), 1 for any other failure; ``--debug`` shows the traceback instead.
* Ctrl-C stops cleanly: one line, on a line of its own (open progress bars are closed first), exit status
  130; what was complete is already on disk (every result file is written atomically when complete) and the
  same command resumes from it.
* The last line lists the files written (:class:`Outputs`); result files are mode 0644
  (:func:`storage.atomic.atomic_write`, the project's one atomic writer).
* ``--data-dir`` always comes with ``--download`` (:func:`add_data_arguments`); every command has
  ``--threads`` (:data:`DEFAULT_THREADS`).

A command is a function ``main(argv, outputs=None)`` that parses ``argv`` with a :func:`make_parser` parser,
calls :func:`setup` and raises on failure (tests and other code call it directly); its module ends with
``if __name__ == "__main__": sys.exit(run(main))``, which applies the conventions above.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

# Threads per command. Two torch jobs on 2 shared cores with 2 threads each oversubscribe the cores and
# collapse (the issue measured a proofs_check example at 29 s alone and 21 minutes beside other jobs; two
# competing jobs ran 1.7x faster with one thread each); see README "Command lines" for our measurement.
# Half the cores (at least 1) keeps a second job from collapsing both; pass --threads to use them all.
DEFAULT_THREADS = max(1, (os.cpu_count() or 1) // 2)

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    """A problem the user fixes on the command line or on disk: printed as one line, exit status 2."""


class UsageExit(SystemExit):
    """A usage error found while reading the options (``str()`` is the message, ``code`` is 2): uncaught it
    ends the program like argparse's own errors; :func:`run` prints it as one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = EXIT_USAGE


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Full descriptions kept as written (no re-wrapping mid-sentence) and every default shown."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=110)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        stated = "%(default)" in text or "default:" in text  # the help already says it
        if stated or default is None or default is False or default is argparse.SUPPRESS or default == [] \
                or isinstance(action, argparse._HelpAction):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line: a :class:`UsageExit` (exit status 2) naming the problem
    and ``--help``, instead of the usage text and the message."""

    def error(self, message: str) -> NoReturn:
        raise UsageExit(f"{message} (see {self.prog} --help)")


def make_parser(prog: str, doc: str | None, *, threads: bool = True) -> argparse.ArgumentParser:
    """An :class:`ArgumentParser` with the module docstring as description, defaults shown, ``--debug`` and
    (unless ``threads=False``) ``--threads``."""
    parser = ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)
    if threads:
        parser.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                            help="torch CPU threads (default: %(default)s = half the cores, so that a second "
                                 "job does not make both collapse)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` and ``--download`` (always together) and ``--no-verify``."""
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the MNIST *-ubyte.gz files (directly or under MNIST/raw/) "
                             "and/or CIFAR-10's cifar-10-batches-py/; default: $NR_DATA_DIR")
    parser.add_argument("--download", action="store_true",
                        help="download missing dataset files into --data-dir (needs internet)")
    parser.add_argument("--no-verify", action="store_true", help="skip the dataset checksum verification")


def shown_command(program: str, argv: Sequence[str], cwd: Path | None = None) -> str:
    """The command line a report prints: ``program`` and ``argv`` shell-quoted, with this machine's folders
    taken out, so that a reader can run it anywhere.

    The value of ``--data-dir`` becomes ``DIR`` (README's convention; the data may also come from
    ``$NR_DATA_DIR``), and an absolute path inside ``cwd`` (default: the working directory) becomes
    relative to it. Other arguments are kept as given.
    """
    base = (cwd or Path.cwd()).resolve()
    shown: list[str] = []
    after_data_dir = False
    for argument in argv:
        if after_data_dir:
            argument, after_data_dir = "DIR", False
        elif argument == "--data-dir":
            after_data_dir = True
        elif argument.startswith("--data-dir="):
            argument = "--data-dir=DIR"
        elif os.path.isabs(argument):
            path = Path(argument).resolve()
            if path.is_relative_to(base):
                argument = path.relative_to(base).as_posix() or "."
        shown.append(argument)
    return " ".join([program, *map(shlex.quote, shown)])


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def budget(text: str) -> float:
    """argparse type: a perturbation budget, a finite number >= 0 (``0.1`` or ``8/255``)."""
    try:
        top, _, bottom = text.partition("/")
        value = float(top) / float(bottom) if bottom else float(top)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (0.1 or 8/255), got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a budget must be a finite number >= 0, got {text!r}")
    return value


def distinct(values: Sequence[float], option: str) -> list[float]:
    """``values`` unchanged, or a :class:`UsageError` naming the repeated one (each budget is one record)."""
    seen: set[float] = set()
    for value in values:
        if value in seen:
            raise UsageError(f"{option} lists {value:g} twice: give each value once")
        seen.add(value)
    return list(values)


def resolve_device(name: str | torch.device) -> torch.device:
    """The device a ``--device`` value names: ``auto`` is CUDA when available, else the CPU; a name torch
    does not know is a :class:`UsageError`."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device: use cpu, cuda, cuda:N or auto") from None


def setup(args: argparse.Namespace) -> None:
    """Apply the common options: ``torch.set_num_threads(args.threads)``."""
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)


class Outputs:
    """The files a command wrote, in order, for its closing line."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        if path not in self.paths:
            self.paths.append(path)
        return path

    def line(self) -> str:
        if not self.paths:
            return "wrote no files"
        return "wrote " + ", ".join(str(p) for p in self.paths)


def one_line(error: BaseException) -> str:
    """The error's message on one line (continuation lines joined with '; ')."""
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and error.args:
        text = f"missing key {error.args[0]!r}"
    parts = [part.strip() for part in text.splitlines() if part.strip()]
    return "; ".join(parts)


def _is_usage_error(error: BaseException) -> bool:
    from nets.datasets import DatasetError
    from nets.training import ResumeMismatchError
    from storage.atomic import DiskFullError

    usage = (UsageError, DatasetError, FileNotFoundError, FileExistsError, NotADirectoryError, DiskFullError,
             ResumeMismatchError)
    return isinstance(error, usage)


def _hint(error: BaseException) -> str:
    from nets.datasets import DatasetChecksumError, DatasetDownloadError, DatasetError, DatasetNotFoundError

    if isinstance(error, DatasetNotFoundError):
        return "pass --data-dir DIR (or set NR_DATA_DIR) to a folder holding the files, or add --download"
    if isinstance(error, DatasetChecksumError):
        return "the file differs from the reference copy: delete it and rerun with --download"
    if isinstance(error, DatasetDownloadError):
        return "download the files by hand into --data-dir (see README)"
    if isinstance(error, DatasetError):
        return "check the files under --data-dir"
    return ""


def end_progress_bars() -> None:
    """Close every live tqdm bar, so that what follows starts on a fresh line (a bar left open keeps the
    cursor at the end of its line; closing it ends the line, or clears it)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run(main: Callable[..., Any], argv: Sequence[str] | None = None, *, stream=None) -> int:
    """Call ``main(argv, outputs=...)`` with the conventions of this module; returns the exit status.

    ``main`` may return an int (its exit status); anything else means success (0).
    """
    stream = stream or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    outputs = Outputs()
    try:
        result = main(argv, outputs=outputs)
    except UsageExit as error:
        print(f"error: {one_line(error)}", file=stream, flush=True)
        return EXIT_USAGE
    except SystemExit:  # argparse (--help, usage errors): it has printed its own message
        raise
    except KeyboardInterrupt:
        end_progress_bars()
        if debug:
            traceback.print_exc()
        done = f"; complete results kept: {outputs.line()[6:]}" if outputs.paths else ""
        print(f"interrupted{done}; rerun the same command to resume", file=stream, flush=True)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place that turns errors into one line
        if debug:
            raise
        usage = _is_usage_error(error)
        what = one_line(error)
        hint = "" if "--download" in what or "--data-dir" in what else _hint(error)  # it says so already
        if not usage:
            what = f"{type(error).__name__}: {what}"
        tail = f"; {hint}" if hint else ""
        what = what.rstrip(".") if hint else what
        more = "" if usage else " [rerun with --debug for the traceback]"
        print(f"error: {what}{tail}{more}", file=stream, flush=True)
        if outputs.paths:
            print(outputs.line(), file=stream, flush=True)
        return EXIT_USAGE if usage else EXIT_FAILURE
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first process reports
        print(outputs.line(), flush=True)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


__all__ = [
    "DEFAULT_THREADS",
    "ArgumentParser",
    "HelpFormatter",
    "Outputs",
    "UsageError",
    "UsageExit",
    "add_data_arguments",
    "budget",
    "distinct",
    "end_progress_bars",
    "make_parser",
    "one_line",
    "positive_int",
    "resolve_device",
    "run",
    "setup",
]
