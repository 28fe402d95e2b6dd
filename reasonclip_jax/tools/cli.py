"""The command-line convention every tool follows: parser, errors, logging.

    python -m reasonclip_jax.evaluate --bogus   # one line: error: ... (see --help); exit 2
    python -m reasonclip_jax.convert import --verbose ...   # the libraries' INFO logs too

- `ArgumentParser` reports a bad command line as one line (`error: ... (see --help)`, exit 2)
  and gives every tool `--verbose`.
- `entry_point` wraps an argparse tool's `main`: logging set up, `UserError` -> one line, exit 2.
- `run_absl_main` replaces `absl.app.run` for the config-file tools (train, sweep, plan): the
  same logging and errors, a `--verbose` flag, `--config.KEY=...` overrides of unknown keys
  named in one line (`check_config_overrides`), and config files that import their
  neighbours from the working directory, as under `python -m`, from a console command too.

Logging: one format on stderr; the project's loggers (`reasonclip_jax`, `data_pipeline`,
`configs`, and `absl.logging` calls made from their files) at INFO; every other library at
WARNING unless `--verbose`.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar

from reasonclip_jax.errors import UserError, exit_on_user_error

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMAT = "%(asctime)s %(levelname)s %(module)s: %(message)s"
PROJECT_LOGGERS = ("reasonclip_jax", "data_pipeline", "configs")
# Libraries known to log at INFO (or to set their own levels); every other one inherits
# the root logger's WARNING anyway.
LIBRARY_LOGGERS = ("absl", "jax", "jaxlib", "flax", "optax", "orbax", "grain", "apache_beam",
                   "tensorstore", "etils", "PIL", "fsspec", "filelock", "urllib3", "h5py",
                   "transformers", "huggingface_hub", "torch")
VERBOSE_HELP = "also show the libraries' INFO logs (orbax, absl, jax, grain, beam, ...)"

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PROJECT_DIRS = tuple(os.path.join(_ROOT, name) + os.sep for name in PROJECT_LOGGERS)


# ------------------------------------------------------------------------------- logging


class _StderrHandler(logging.StreamHandler):
    """Writes to the current `sys.stderr`, so a swapped one (pytest's capture) is honoured."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class AbslChatterFilter(logging.Filter):
    """On the `absl` logger, which project code and libraries (orbax, grain) share: passes
    WARNING and up, and INFO from the project's own files; everything when `verbose`."""

    def __init__(self, verbose: bool = False) -> None:
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.WARNING:
            return True
        return record.levelno >= logging.INFO and record.pathname.startswith(_PROJECT_DIRS)


def setup_logging(verbose: bool = False) -> None:
    """One stderr handler on the root logger; project at INFO, libraries at WARNING.

    Idempotent: a second call (e.g. `--verbose` after the entry point's default) only
    changes levels. Removes absl's own handler so absl apps print in the same format.
    """
    from absl import logging as absl_logging  # first, so the `absl` logger is absl's class

    root = logging.getLogger()
    absl_handler = absl_logging.get_absl_handler()
    for handler in list(root.handlers):
        # absl's, ours from an earlier call, and any a library's import-time basicConfig()
        # left (it would print every line twice); pytest's capture handlers stay.
        if handler is absl_handler or not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    # absl at INFO, filtered: project modules log through `absl.logging` too.
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for f in [f for f in absl_logger.filters if isinstance(f, AbslChatterFilter)]:
        absl_logger.removeFilter(f)
    absl_logger.addFilter(AbslChatterFilter(verbose))


# ------------------------------------------------------------------------------ argparse


class _VerboseAction(argparse.Action):
    """`--verbose`: sets the flag and raises the log levels at once, wherever it is parsed."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        setup_logging(verbose=True)


def add_verbose_flag(parser: argparse.ArgumentParser, default: Any = False) -> None:
    """Adds `--verbose` (what `ArgumentParser` does for itself and its subcommands)."""
    parser.add_argument("--verbose", action=_VerboseAction, default=default, help=VERBOSE_HELP)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line `UserError`s instead of usage + message, and `--verbose`.

    `formatter_class` defaults to raw descriptions (the tools' docstrings are their help).
    """

    def __init__(self, *args: Any, verbose_default: Any = False, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        add_verbose_flag(self, verbose_default)

    def add_subparsers(self, **kwargs: Any) -> Any:
        # A subcommand's defaults overwrite the parent's values: SUPPRESS keeps
        # `tool --verbose sub` verbose.
        kwargs.setdefault("parser_class",
                          functools.partial(type(self), verbose_default=argparse.SUPPRESS))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def entry_point(main: F) -> F:
    """Decorator for a tool's `main`: logging set up, a `UserError` -> `error: MESSAGE`, exit 2.

        @cli.entry_point
        def main(argv=None): args = parse_args(argv); ...
    """

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging(verbose=False)  # `--verbose`, parsed inside main, raises the levels
        return main(*args, **kwargs)

    return exit_on_user_error(wrapper)  # type: ignore[return-value]


# ------------------------------------------------------------------- absl + ml_collections


def _config_keys(node: Any, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        yield f"{prefix}{key}"
        if callable(getattr(value, "items", None)):
            yield from _config_keys(value, f"{prefix}{key}.")


def _unknown_prefix(config: Any, path: str) -> bool:
    """Whether `path` names a key the config lacks (False where a list or leaf stops the walk:
    ml_collections itself judges overrides inside those)."""
    node = config
    for part in path.split("."):
        name = part.split("[", 1)[0]
        if not callable(getattr(node, "items", None)):
            return False
        if name not in node:
            return True
        if name != part:  # an index into a list: not checked further
            return False
        node = node[name]
    return False


def _overrides(argv: Sequence[str], flag: str) -> Iterator[str]:
    pattern = re.compile(rf"^--?(?:no)?{re.escape(flag)}\.([^=]+)")
    for arg in argv:
        if arg == "--":  # absl stops parsing flags here
            return
        if match := pattern.match(arg):
            yield match.group(1)


def check_config_overrides(argv: Sequence[str], config: Any, flag: str = "config") -> None:
    """Raises `UserError` naming the closest key for a `--config.KEY=...` the config lacks.

        check_config_overrides(["--config.input.batchsize=3"], config)
        # UserError: unknown config key 'input.batchsize'; did you mean 'input.batch_size'?
    """
    keys: list[str] | None = None
    for path in _overrides(argv, flag):
        if not _unknown_prefix(config, path):
            continue
        keys = keys if keys is not None else list(_config_keys(config))
        # 0.75: a shared 'input.' prefix alone must not make an unrelated key look close.
        close = difflib.get_close_matches(path, keys, n=1, cutoff=0.75)
        hint = f"did you mean '{close[0]}'?" if close else "the config has no similar key"
        raise UserError(f"unknown config key '{path}'; {hint}")


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The last value given for `--flag` (`--flag=V` or `--flag V`), as absl reads it."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        name, sep, rest = arg.partition("=")
        if name in (f"--{flag}", f"-{flag}"):
            value = rest if sep else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def _parse_absl_flags(argv: list[str], config_flag: str) -> list[str]:
    from absl import flags

    config_arg = _flag_value(argv[1:], config_flag)
    if config_arg is not None:
        path = config_arg.split(":", 1)[0]
        if not os.path.isfile(path):  # ml_collections defers this error to the first access
            raise UserError(f"--{config_flag} {config_arg}: no such file {path}")
    try:
        return flags.FLAGS(argv)
    except (KeyError, AttributeError):
        # ml_collections raises these, with a traceback, for an override of an unknown key.
        if config_arg is not None and config_flag in flags.FLAGS:
            base = flags.FLAGS[config_flag].parser.parse(config_arg)
            check_config_overrides(argv[1:], base, config_flag)
        raise
    except flags.Error as e:
        raise UserError(f"{e} (see --helpshort)") from None


def run_absl_main(main: Callable[[list[str]], Any], config_flag: str = "config") -> None:
    """`absl.app.run(main)` under this convention: one-line flag errors (unknown config keys
    with the closest one), `--verbose`, the shared logging, `UserError` -> exit 2.

        python -m reasonclip_jax.train --config configs/demo.py --config.input.batchsize=3
        # error: unknown config key 'input.batchsize'; did you mean 'input.batch_size'?
    """
    from absl import app, flags

    # Config files import their neighbours (`from configs import common`) from the working
    # directory, where `python -m` looks; a console command's path does not hold it.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, VERBOSE_HELP)
    # After app.run's own set-up, which installs absl's handler and sets the root level.
    app.call_after_init(lambda: setup_logging(flags.FLAGS.verbose))
    try:
        app.run(main, flags_parser=lambda argv: _parse_absl_flags(list(argv), config_flag))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
