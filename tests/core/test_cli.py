"""The CLI: every subcommand parses, helps, and is documented in docs/cli.md."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from laion_audio.cli import build_parser, main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub._name_parser_map)


def test_expected_commands_exist():
    assert {"build", "transcode", "refresh", "shard", "verify", "report", "caption",
            "train-captioner", "evalsets", "filter", "train", "evaluate"} <= set(_commands())


@pytest.mark.parametrize("name", _commands())
def test_help_and_docs(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
    assert f"\n## {name}\n" in DOCS.read_text(), "regenerate: python docs/generate_cli.py > docs/cli.md"


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_stage_is_a_clear_error(capsys, tmp_path):
    assert main(["build", "--source", "local", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--stages", "crawl,teleport"]) == 2
    assert "teleport" in capsys.readouterr().out
