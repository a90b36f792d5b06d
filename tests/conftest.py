"""Shared fixtures: a tiny random Llama with a real (tiny) tokenizer and chat template, and small data files."""

from __future__ import annotations

from pathlib import Path

import pytest

from semift_lightning.testing import make_tiny_model, write_fpb_like


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture
def fpb_like(tmp_path) -> Path:
    """A folder laid out like the SemiEvol fpb split: labeled / unlabeled / test CSVs."""
    return write_fpb_like(tmp_path / "data")
