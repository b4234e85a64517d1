"""Every command's help in an 80-column terminal: nothing cut, every default shown, the examples
valid."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cloudclear.cli import app

runner = CliRunner()


def _commands(cmd=None, path=()):
    cmd = cmd or get_command(app)
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = [path for path, _ in _commands()]

#: Options whose unset value (None) stands for a value of their own: the help must say which.
NONE_MEANS_A_VALUE = {
    ("index",): {"--date-pattern", "--buffer", "--unclassified", "--snow", "--mask-source", "--temporal-days"},
    ("infer",): {"--max-days", "--max-cloud", "--window", "--buffer", "--temporal", "--temporal-days"},
    ("sample",): {"--s1-max-gap", "--per-location", "--block-days", "--buffer", "--temporal"},
    ("synth",): {"--size"},
    ("mask",): {"--sun"},
    ("train",): {"--width", "--depth"},
}


def _help(path: tuple[str, ...]) -> str:
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    return res.stdout


def test_the_list_covers_every_command():
    assert {p[0] for p in COMMANDS if p} >= {"index", "infer", "score", "sample", "train", "models", "layouts"}


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "cloudclear")
def test_help_fits_80_columns_and_cuts_nothing(path):
    text = _help(path)
    lines = text.splitlines()
    assert lines[0].startswith(f"Usage: {' '.join(('cloudclear', *path))}")
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, too_wide
    assert "…" not in text  # Rich's cut
    cut = [line for line in lines[1:] if line.rstrip().endswith("...")]  # Click's cut of a command's help
    assert not cut, cut
    assert "<bool>" not in text
    assert "[default: ]" not in text


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "cloudclear")
def test_every_default_is_shown(path):
    import click

    cmd = dict(_commands())[path]
    ctx = click.Context(cmd, info_name="cloudclear", terminal_width=80)
    text = "".join(cmd.get_help(ctx).split())  # (also fills in the registry names)
    missing = []
    for param in cmd.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        record = param.get_help_record(ctx)
        assert record is not None
        help_text = record[1]
        assert "".join(help_text.split()) in text  # the whole help, not a cut of it
        off_switch = param.is_flag and not param.secondary_opts and param.default is False
        has_value = param.default is not None and not off_switch
        if (has_value or param.opts[0] in NONE_MEANS_A_VALUE.get(path, ())) and "default:" not in help_text:
            missing.append(param.opts[0])
    assert not missing, f"{' '.join(path)}: options without their default: {missing}"


def test_command_list_shows_whole_sentences():
    text = " ".join(_help(()).split())
    for path, cmd in _commands():
        if len(path) == 1:
            first = " ".join((cmd.help or "").split("\n\n")[0].replace("\b", "").split())
            assert f"{path[0]} {first}" in text


def test_infer_max_days_and_max_cloud_show_their_default():
    text = _help(("infer",))
    assert "How far from the date to look for S2. [default: 60]" in " ".join(text.split())
    assert "are not used. [default: 95]" in " ".join(text.split())


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "cloudclear")
def test_descriptions_fill_their_lines(path):
    """A description paragraph is rewrapped to the terminal, not broken where the docstring's
    lines (100 columns) ended: only its last line may be short."""
    text = "\n".join(line.rstrip() for line in _help(path).splitlines())
    head = text.split("\nArguments:")[0].split("\nOptions:")[0].split("Options ─")[0]
    for paragraph in head.split("\n\n")[1:]:
        lines = paragraph.splitlines()
        if any(line.startswith("    ") for line in lines):  # a verbatim block: examples, formulas
            continue
        short = [line for line in lines[:-1] if len(line) < 50]
        assert not short, paragraph
    if path == ("infer",):
        assert "the nearest and least cloudy S2 scenes" in " ".join(head.split())


def test_infer_example_names_the_readme_catalog():
    """The example in `infer --help` runs after the README's first command (`index ... -c out/sample.gpkg`)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    text = _help(("infer",))
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith("cloudclear infer ")]
    assert examples
    for line in examples:
        catalog = line.split(" -c ", 1)[1].split()[0]
        assert f"-c {catalog}" in readme, f"{catalog} is not the catalog the README's first command writes"
    assert "sample_tiles/T31UFQ" not in text


def test_help_shows_no_rich_markup_and_stays_light():
    code = (
        "import os, sys\n"
        "os.environ['COLUMNS'] = '80'\n"
        "from cloudclear.cli import main\n"
        "sys.argv = ['cloudclear', 'infer', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted({'torch', 'rasterio', 'numpy'} & set(sys.modules)), file=sys.stderr)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: cloudclear infer" in res.stdout and "╭" not in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    assert res.stderr.strip() == "[]"
