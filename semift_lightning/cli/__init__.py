"""The ``semift`` command (LightningCLI fit / validate / test / predict, ``demo``, ``compare``, ``report``)."""

from semift_lightning.cli.command import main, run

__all__ = ["main", "run"]
