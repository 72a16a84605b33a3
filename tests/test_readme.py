"""The README is the newcomer's only guide: keep it true to the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from asgiws.cli import _option_for
from asgiws.config import Config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_documents_every_cli_option():
    for field in dataclasses.fields(Config):
        if not field.metadata.get("cli", True):
            continue
        for flag in _option_for(field).opts:
            assert f"`{flag}`" in README, f"README does not document {flag}"


def test_readme_opens_with_the_run_and_test_commands_ci_uses():
    commands = re.search(r"```sh\n(.*?)\n```", README, re.S).group(1).splitlines()
    assert len(commands) == 2
    run_command, test_command = commands
    assert "asgiws examples." in run_command
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_example_apps_exist():
    for module in re.findall(r"asgiws (examples\.[\w.]+):\w+", README):
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), module
