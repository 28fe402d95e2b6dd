"""The shared command-line convention (reasonclip_jax/tools/cli.py).

    .venv/bin/python -m pytest -q tests/test_cli.py
"""

import importlib
import logging
import os
import subprocess
import sys

import pytest

from configs import demo
from reasonclip_jax.errors import UserError
from reasonclip_jax.tools import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
TOOLS = ["reasonclip_jax.tools.convert", "reasonclip_jax.tools.encode",
         "reasonclip_jax.tools.evaluate", "reasonclip_jax.tools.demo",
         "reasonclip_jax.tools.launch", "data_pipeline.build"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=120)


@pytest.fixture(autouse=True)
def restore_logging():
    """setup_logging changes process-wide state; put it back for the other test files."""
    names = ["", "absl", *cli.PROJECT_LOGGERS, *cli.LIBRARY_LOGGERS]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for n, (level, filters) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.filters[:] = filters
    logging.getLogger().handlers[:] = handlers


# ------------------------------------------------------------------------- parser errors


def test_bad_argument_is_one_line_and_exit_2_in_a_subprocess(tmp_path):
    result = run("-m", "reasonclip_jax.evaluate", "--checkpoint", str(tmp_path),
                 "--eval", f"rclip_bench:{tmp_path}", "--bogus")
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: unrecognized arguments: --bogus (see --help)\n"


@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_follows_the_convention(module, capsys):
    tool = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--no-such-flag"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and err.endswith("(see --help)\n") and err.count("\n") == 1


def test_subcommands_keep_verbose_from_either_side():
    parser = cli.ArgumentParser(prog="t")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("go")
    assert parser.parse_args(["--verbose", "go"]).verbose
    assert parser.parse_args(["go", "--verbose"]).verbose
    assert not parser.parse_args(["go"]).verbose
    with pytest.raises(UserError, match=r"^argument command: invalid choice.*\(see --help\)$"):
        parser.parse_args(["stop"])


# ------------------------------------------------------------------------------- logging

LOGGING_TOOL = """
import logging, sys
from absl import logging as absl_logging
from reasonclip_jax.tools import cli

@cli.entry_point
def main(argv):
    cli.ArgumentParser(prog="t").parse_args(argv)
    logging.getLogger("reasonclip_jax.t").info("project info")
    logging.getLogger("orbax.checkpoint").info("orbax info")
    logging.getLogger("apache_beam").warning("beam warning")
    absl_logging.info("absl info")  # from a file outside the project: library chatter

main(sys.argv[1:])
"""


def test_verbose_toggles_library_logs():
    quiet = run("-c", LOGGING_TOOL).stderr
    assert "project info" in quiet and "beam warning" in quiet
    assert "orbax info" not in quiet and "absl info" not in quiet
    loud = run("-c", LOGGING_TOOL, "--verbose").stderr
    assert all(m in loud for m in ("project info", "orbax info", "beam warning", "absl info"))
    # One format for all: time, level, module, message.
    assert all(" INFO " in line or " WARNING " in line for line in loud.splitlines()), loud


def test_levels_and_absl_filter():
    cli.setup_logging(verbose=False)
    assert logging.getLogger("reasonclip_jax.train").getEffectiveLevel() == logging.INFO
    for name in ("orbax", "grain", "jax", "apache_beam", "some_other_library"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING, name
    cli.ArgumentParser(prog="t").parse_args(["--verbose"])
    assert logging.getLogger("orbax").getEffectiveLevel() == logging.INFO

    def record(path: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("absl", level, path, 1, "m", None, None)

    quiet = cli.AbslChatterFilter(verbose=False)
    project_file = os.path.join(ROOT, "reasonclip_jax", "data", "pipeline.py")
    assert quiet.filter(record(project_file))  # project code logging through absl
    assert not quiet.filter(record("/site-packages/orbax/checkpoint/x.py"))
    assert quiet.filter(record("/site-packages/orbax/checkpoint/x.py", logging.WARNING))
    assert cli.AbslChatterFilter(verbose=True).filter(record("/site-packages/orbax/x.py"))


# ------------------------------------------------------------------ config key overrides


@pytest.mark.parametrize("override, closest", [
    ("--config.input.batchsize=3", "input.batch_size"),
    ("--config.inputs.batch_size=3", "input.batch_size"),
    ("--config.total_step=4", "total_steps"),
])
def test_unknown_config_key_names_the_closest(override, closest):
    config = demo.get_config("/tmp/x,stage1,smoke")
    key = override[len("--config."):].split("=")[0]
    message = f"unknown config key '{key}'; did you mean '{closest}'?"
    with pytest.raises(UserError) as e:
        cli.check_config_overrides(["prog", "--config=c.py", override], config)
    assert str(e.value) == message
    with pytest.raises(UserError, match=r"^unknown config key 'input.drop_last'; the config has"):
        cli.check_config_overrides(["--config.input.drop_last=1"], config)


def test_known_config_keys_pass():
    config = demo.get_config("/tmp/x,stage1,smoke")
    cli.check_config_overrides(
        ["--config.input.batch_size=3", "--config.mesh.fsdp", "2", "--noconfig.input.hflip",
         "--config.evals[0].name=x", "--", "--config.not_a_flag_after_the_separator=1"], config)


ABSL_MAIN = """
from ml_collections import config_flags
from reasonclip_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file")

def main(argv):
    print("batch", _CONFIG.value.input.batch_size)

cli.run_absl_main(main)
"""


def test_absl_main_reports_an_unknown_override_in_one_line():
    config = "configs/demo.py:/tmp/x,stage1,smoke"
    bad = run("-c", ABSL_MAIN, "--config", config, "--config.input.batchsize=3")
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.splitlines() == [
        "error: unknown config key 'input.batchsize'; did you mean 'input.batch_size'?"]
    good = run("-c", ABSL_MAIN, "--config", config, "--config.input.batch_size=3", "--verbose")
    assert good.returncode == 0 and good.stdout == "batch 3\n", good.stderr
    for args, words in ((["--config.input.batch_size=x"], "invalid literal"),
                        (["--bogus"], "Unknown command line flag 'bogus'")):
        result = run("-c", ABSL_MAIN, "--config", config, *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: ") and words in result.stderr
