"""The CLI: every subcommand parses, helps, and is documented in docs/cli.md."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from laion_audio.cli import HelpFormatter, build_parser, main

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
    assert "teleport" in capsys.readouterr().err     # errors go to stderr (one line)


@pytest.mark.parametrize("name", _commands())
def test_help_shows_defaults_and_no_rest(name, capsys):
    """Every option with a default says it in --help; no reST markup (``x``, :class:) leaks."""
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":class:" not in text and ":func:" not in text
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    shown = HelpFormatter("x")
    for action in sub.choices[name]._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS, []) \
                and action.help != argparse.SUPPRESS and action.dest not in ("help", "version"):
            assert "default" in shown._get_help_string(action).lower(), (name, action.dest)


def test_verbose_after_the_command(tmp_path):
    args = build_parser().parse_args(["build", "--source", "local", "-v"])
    assert args.verbose is True
    assert build_parser().parse_args(["-v", "build"]).verbose is True
    assert build_parser().parse_args(["build"]).verbose is False


def test_sizes_accept_units():
    p = build_parser()
    assert p.parse_args(["build", "--shard-bytes", "20M"]).shard_bytes == 20_000_000
    assert p.parse_args(["shard", "--shard-bytes", "1GiB"]).shard_bytes == 2**30
    assert p.parse_args(["build", "--audioset-rate-limit", "2M"]).audioset_rate_limit == 2_000_000


def test_build_and_shard_share_the_shard_options():
    """One definition of the shard options: a byte target alone sets no count cap in either
    command (docs/shard-format.md); the build once kept 512 as a second cap."""
    from laion_audio import defaults

    p = build_parser()
    for command in ("build", "shard"):
        args = p.parse_args([command, "--shard-bytes", "1G"])
        assert args.samples_per_shard is None and args.shard_bytes == 10**9
        assert (args.seed, args.test_fraction) == (defaults.SEED, defaults.TEST_FRACTION)


def test_source_repeatable_everywhere():
    p = build_parser()
    for cmd in ("build", "refresh", "caption"):
        assert p.parse_args([cmd, "--source", "bbc", "--source", "local"]).source == ["bbc", "local"]
        assert p.parse_args([cmd, "--source", "bbc", "local"]).source == ["bbc", "local"]
