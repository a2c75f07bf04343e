"""The commands work from a non-editable ``pip install``, outside the checkout (issue 4).

The editable install that ``make test`` uses resolves ``rllib_drqn`` to the source tree, so it
cannot notice a module, a console script or package data that a real install leaves out. This
test builds a fresh virtualenv, ``pip install``s the package into it the way a user would (a
wheel built from the repository in pip's isolated build environment) and runs ``rllib train``,
``rllib evaluate`` and ``python -m rllib_drqn`` from a directory outside the checkout.

The heavy dependencies (Ray, torch, ale-py, ...) are not downloaded again: a ``.pth`` line
puts the test environment's site-packages on the fresh venv's path. A ``.pth`` path line does
not run the ``.pth`` files inside that folder, so the editable finder of the test environment
stays inactive and ``rllib_drqn`` can only come from the fresh install; the test checks that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tuned_examples" / "drqn_stateless_cartpole.yaml"


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    completed = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert completed.returncode == 0, (
        f"{args} exited {completed.returncode}:\n{completed.stdout[-2000:]}\n"
        f"{completed.stderr[-3000:]}"
    )
    return completed


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv holding a regular (not editable) install of the package."""
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", str(venv)], cwd=root, timeout=300)
    python = venv / "bin" / "python"
    fresh_site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root
    ).stdout.strip()
    (Path(fresh_site) / "_test_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    _run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir", str(REPO)],
        cwd=root,
    )
    return venv


def test_package_is_imported_from_the_fresh_install(fresh_venv: Path, tmp_path: Path) -> None:
    completed = _run(
        [
            str(fresh_venv / "bin" / "python"),
            "-c",
            "import rllib_drqn, json; "
            "print(json.dumps({'file': rllib_drqn.__file__, 'all': rllib_drqn.__all__}))",
        ],
        cwd=tmp_path,
    )
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(fresh_venv), found["file"]
    assert not Path(found["file"]).is_relative_to(REPO)
    assert {"DRQNConfig", "DRQN", "DRQNTorchRLModule", "FlickerObservation"} <= set(found["all"])
    py_typed = Path(found["file"]).parent / "py.typed"
    assert py_typed.is_file(), "package data py.typed is missing from the wheel"


def test_train_and_evaluate_from_outside_the_checkout(fresh_venv: Path, tmp_path: Path) -> None:
    """``rllib train file`` leaves a checkpoint; ``rllib evaluate`` plots it; both installed."""
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    yaml_copy = workdir / "drqn_stateless_cartpole.yaml"
    yaml_copy.write_text(EXAMPLE.read_text())
    rllib = str(fresh_venv / "bin" / "rllib")

    trained = _run(
        [
            rllib,
            "train",
            "file",
            yaml_copy.name,
            "--stop",
            '{"training_iteration": 1}',
            "--storage-path",
            str(workdir / "results"),
        ],
        cwd=workdir,
    )
    checkpoints = sorted(p for p in (workdir / "results").rglob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 1, trained.stdout[-2000:]
    assert f"Checkpoint: {checkpoints[0]}" in trained.stdout

    _run(
        [
            rllib,
            "evaluate",
            str(checkpoints[0]),
            "--flicker-probs",
            "0,1",
            "--episodes",
            "1",
            "--out",
            str(workdir / "eval"),
        ],
        cwd=workdir,
    )
    table = json.loads((workdir / "eval" / "evaluation.json").read_text())
    assert [row["flicker_prob"] for row in table["results"]] == [0.0, 1.0]
    assert (workdir / "eval" / "observability.png").stat().st_size > 0

    module_help = _run(
        [str(fresh_venv / "bin" / "python"), "-m", "rllib_drqn", "--help"], cwd=workdir
    )
    assert "train" in module_help.stdout and "evaluate" in module_help.stdout
