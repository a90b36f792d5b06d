"""The wheel carries the configs and recipes: after ``pip install .``, ``semift demo`` runs from any folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_demo import write_reviews

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project as ``pip install .`` installs it (without dependencies: they are this environment's), in a folder
    of its own that the subprocesses import from instead of the checkout."""
    folder = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-w", str(folder / "dist"), "-q"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((folder / "dist").glob("semift_lightning-*.whl"))
    target = folder / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel),
                              "-q"], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    return target


def semift(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    code = "import semift_lightning, sys; from semift_lightning.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=900)


def test_the_wheel_ships_configs_and_recipes_and_the_demo_runs_outside_a_checkout(installed, tiny_model, tmp_path):
    shipped = {p.name for p in (installed / "semift_lightning" / "configs").glob("*.yaml")}
    assert shipped == {p.name for p in (REPO / "configs").glob("*.yaml")}
    recipes = {p.name for p in (installed / "semift_lightning" / "recipes").glob("*.yaml")}
    assert recipes == {p.name for p in (REPO / "callbacks").glob("*.yaml")}
    where = semift(installed, tmp_path, "--help")
    assert where.returncode == 0 and "{fit,validate,test,predict}" in where.stdout
    located = subprocess.run([sys.executable, "-c", "import semift_lightning; print(semift_lightning.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)})
    assert located.stdout.startswith(str(installed))  # the installed copy, not the checkout
    assert "usage: semift demo" in semift(installed, tmp_path, "demo", "--help").stdout
    train, test = write_reviews(tmp_path / "train.tsv", 30, 1), write_reviews(tmp_path / "test.tsv", 6, 2)
    demo = semift(installed, tmp_path, "demo", "--out", str(tmp_path / "demo"), "--sft-epochs", "1",
                  "--semievol-epochs", "1", "--", "--model.model", tiny_model, "--data.source", str(train),
                  "--data.test", str(test), "--data.sizes.unlabeled", "12", "--data.split_fractions", "[0.4, 0.6, 0.0]",
                  "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "semift demo: vanilla → SFT → SemiEvol" in demo.stdout
    assert str(installed / "semift_lightning" / "configs" / "demo.yaml") in demo.stdout  # the shipped config
