"""shards.cli: the one dataclass-to-flags parser of every command."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

import pytest

from shards import cli


@dataclass
class Example:
    CHOICES: ClassVar[dict] = {"mode": ("fast", "exact")}
    HELP: ClassVar[dict] = {"rows": "rows per unit"}

    rows: int = 8
    ratio: float | None = None
    mode: str = "fast"
    verbose: bool = True
    name: str | None = None


def test_flags_follow_the_fields_types_choices_and_help(capsys):
    assert cli.parse(Example, [], "prog", "") == Example()
    got = cli.parse(Example, ["--rows", "3", "--ratio", "0.5", "--mode", "exact", "--no-verbose", "--name", "x"],
                    "prog", "")
    assert got == Example(rows=3, ratio=0.5, mode="exact", verbose=False, name="x")
    help_text = " ".join(cli.build_parser(Example, "prog", "").format_help().split())
    assert "--rows ROWS rows per unit; default: 8" in help_text and "--verbose, --no-verbose default: True" in help_text
    assert "(default: None)" not in help_text
    for bad, message in ((["--rows", "x"], "argument --rows: invalid int value: 'x'"),
                         (["--mode", "slow"], "argument --mode: invalid choice: 'slow'")):
        with pytest.raises(SystemExit):
            cli.parse(Example, bad, "prog", "")
        assert message in capsys.readouterr().err
    given = cli.build_parser(Example, "prog", "", suppress_defaults=True).parse_args(["--rows", "2"])
    assert vars(given) == {"rows": 2}  # what the trainers lay over a recipe


def test_a_field_without_a_flag_type_is_refused():
    @dataclass
    class Bad:
        sizes: list[int] | None = None

    with pytest.raises(TypeError, match="no command-line flag for a field of type"):
        cli.build_parser(Bad, "prog", "")


@pytest.mark.parametrize("package", ["train", "pipelines"])
def test_a_dispatcher_prints_its_usage_for_help_and_refuses_an_unknown_command(package, capsys):
    """`python -m train --help` is a request (status 0, standard output); no command or another is a usage error."""
    main = importlib.import_module(f"{package}.__main__").main
    for argv, status in ((["--help"], 0), (["-h"], 0), ([], 2), (["nope"], 2)):
        assert main(argv) == status
        out, err = capsys.readouterr()
        assert (out if status == 0 else err).startswith(f"usage: python -m {package} {{pretrain,sft,")
        assert (err if status == 0 else out) == ""


@pytest.mark.parametrize("module, flag", [("bench.shards", "--rounds"), ("bench.shards", "--workers"),
                                          ("bench.train", "--rounds"), ("bench.generate", "--new-tokens")])
def test_a_benchmark_refuses_a_count_below_one(module, flag):
    """--rounds 0 ended in a ZeroDivisionError (bench.train), a StatisticsError (bench.generate) or an
    UnboundLocalError (bench.shards), after building the models or the input; now a usage message at once."""
    with pytest.raises(SystemExit, match=f"{module}: {flag} must be at least 1, got 0"):
        importlib.import_module(module).main([flag, "0"])
