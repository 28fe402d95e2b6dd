"""The package installs (`pip install .` and `pip install -e .`) with its console commands,
and every dependency it declares is pinned in requirements.txt at a version it accepts.

The install goes into a throwaway virtual environment that sees this environment's packages
(`--no-deps`: nothing is downloaded), from a copy of the sources (a build writes into its
source tree).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("reasonclip-train", "reasonclip-evaluate", "reasonclip-encode",
            "reasonclip-convert", "reasonclip-launch", "reasonclip-build-data",
            "reasonclip-sweep", "reasonclip-plan")


def _project() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _pins() -> dict[str, str]:
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                requirement = Requirement(line)
                pins[requirement.name.lower().replace("_", "-")] = str(
                    next(iter(requirement.specifier)).version)
    return pins


def test_every_declared_dependency_is_pinned_within_its_range():
    project, pins = _project(), _pins()
    declared = list(project["dependencies"])
    for name, extra in project["optional-dependencies"].items():
        if name != "tpu":  # libtpu: not installable on the machines that run the tests
            declared += extra
    assert len(declared) > 20
    for line in declared:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{line}: not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{line}: requirements.txt pins {pins[name]}")
    assert set(project["scripts"]) == set(COMMANDS)


def _venv(tmp_path) -> str:
    """A virtual environment whose interpreter also sees this one's packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "parent.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return str(venv / "bin")


def _sources(tmp_path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for package in ("reasonclip_jax", "data_pipeline"):
        shutil.copytree(os.path.join(ROOT, package), src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return str(src)


def _run(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_gives_the_console_commands(tmp_path, editable):
    bin_dir, src = _venv(tmp_path), _sources(tmp_path)
    install = [os.path.join(bin_dir, "python"), "-m", "pip", "install", "--quiet", "--no-deps",
               "--no-build-isolation", "--no-index", *(["-e"] if editable else []), src]
    done = _run(install, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    for command in COMMANDS:
        assert os.path.isfile(os.path.join(bin_dir, command)), command

    # The installed package, not this checkout: the copy (editable) or site-packages.
    where = _run([os.path.join(bin_dir, "python"), "-c",
                  "import reasonclip_jax, data_pipeline; print(reasonclip_jax.__file__); "
                  "from reasonclip_jax.models import tokenizer; "
                  "print(tokenizer.tokenize(['a photo of a cat'])[0][:7].tolist())"],
                 cwd=str(tmp_path))
    assert where.returncode == 0, where.stderr[-3000:]
    location, ids = where.stdout.splitlines()
    expected = src if editable else os.path.join(str(tmp_path), "venv")
    assert location.startswith(expected) and not location.startswith(ROOT + os.sep)
    assert ids == "[49406, 320, 1125, 539, 320, 2368, 49407]"  # the packaged BPE vocabulary

    convert = _run([os.path.join(bin_dir, "reasonclip-convert"), "--help"], cwd=str(tmp_path))
    assert convert.returncode == 0 and "export" in convert.stdout
    # The trainer's config files import their neighbours from the working directory.
    train = _run([os.path.join(bin_dir, "reasonclip-train"),
                  "--config=configs/demo.py:/nowhere,stage1,smoke", "--workdir=/tmp/unused",
                  "--config.input.batchsize=3"], cwd=ROOT)
    assert train.returncode == 2
    assert "did you mean 'input.batch_size'" in train.stderr, train.stderr[-3000:]
    build = _run([os.path.join(bin_dir, "reasonclip-build-data"), "--source", "nothing",
                  "--output", str(tmp_path / "o")], cwd=str(tmp_path))
    assert build.returncode == 2 and "invalid choice: 'nothing'" in build.stderr
    report = _run([os.path.join(bin_dir, "reasonclip-sweep"), "--report",
                   str(tmp_path / "nothing")], cwd=str(tmp_path))
    assert report.returncode == 2 and "error: no runs under" in report.stderr
    planned = _run([os.path.join(bin_dir, "reasonclip-plan"),
                    "--config=configs/sweeps/tiny.py:/nowhere", "--sweep", "--devices=8",
                    "--device-memory=1GiB", "--nolargest"], cwd=ROOT)
    assert planned.returncode == 0 and "| 128 |" in planned.stdout, planned.stderr[-3000:]
