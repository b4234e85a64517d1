"""The ``cloudclear`` command line: parse, call one library function, print.

Each command lives in the module of its stage (:mod:`.catalog`, :mod:`.synth`, :mod:`.score`,
:mod:`.infer`, :mod:`.masks`, :mod:`.sampling`, :mod:`.training`); what they share (``--json``,
``--overwrite``, parsers of option values, registry choices) is in :mod:`.options`. They are
registered here, in the order of the pipeline.

Errors are turned into one line here, once, for every command: a :class:`CloudClearError` (or a
``MemoryError``) from the library becomes ``cloudclear: error: MESSAGE`` on stderr and exit code 1.
Library modules (rasterio, geopandas, torch...) are imported inside the commands so that
``cloudclear --help`` stays instant.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cloudclear import __version__
from cloudclear.cli import catalog, infer, masks, sampling, score, synth, training, view
from cloudclear.cli.options import RegistryCommand, set_verbosity
from cloudclear.errors import CloudClearError

__all__ = ["app", "main"]


def _wrap_at_spaces_only() -> None:
    """Help lines break at spaces only, never inside ``--as-decoded`` or ``multi-temporal-small``
    (a name split at its hyphen cannot be copied). Typer wraps with its vendored copy of Click's
    text wrapper; where a later Typer lays it out differently, its own wrapping stays."""
    try:
        from typer._click import _textwrap
    except ImportError:  # pragma: no cover - another Typer layout
        return
    wrapper = getattr(_textwrap, "TextWrapper", None)
    if wrapper is not None and hasattr(wrapper, "wordsep_simple_re"):
        wrapper.wordsep_re = wrapper.wordsep_simple_re


_wrap_at_spaces_only()


class _HelpGroup(TyperGroup):
    """A group whose command list shows each command's whole first paragraph, wrapped, where
    Click would cut it with "..." to fit one line."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or (cmd.help or "").split("\n\n")[0]
            rows.append((name, " ".join(text.replace("\b", "").split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class _Group(_HelpGroup):
    """The top-level group: every command (and sub-group) runs inside its :meth:`invoke`, so this
    is the one place where a user-facing error becomes one line and exit code 1, whether the app
    runs from :func:`main` or from ``typer.testing.CliRunner``."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CloudClearError as exc:
            typer.echo(f"cloudclear: error: {exc}", err=True)
            raise typer.Exit(1) from None
        except MemoryError as exc:
            # numpy says how much it tried to allocate; a bare MemoryError says nothing
            detail = str(exc) or "the request needs more memory than this machine has"
            typer.echo(f"cloudclear: error: out of memory: {detail}", err=True)
            raise typer.Exit(1) from None


class _Typer(typer.Typer):
    """A Typer whose commands fill ``{registry}`` names into their option help when it is shown.

    Help is Click's plain text, not Rich's panels: it rewraps paragraphs to the terminal's width
    (80 columns in an 80-column terminal) instead of cutting option help with "..." or breaking
    lines where the docstring did, shows no placeholder after a switch, and keeps
    ``[default: ...]``, which Rich takes for markup and drops.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rich_markup_mode", None)
        kwargs.setdefault("cls", _HelpGroup)
        super().__init__(*args, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", RegistryCommand)
        return super().command(*args, **kwargs)


app = _Typer(
    name="cloudclear",
    help="Remove clouds from whole Sentinel-2 tiles, helped by Sentinel-1.",
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # help as wide as the terminal (Click stops at 80 columns unless told)
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 200},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cloudclear {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output (repeat for debug).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Remove clouds from whole Sentinel-2 tiles, helped by Sentinel-1."""
    set_verbosity(verbose, quiet)


app.command()(catalog.index)
app.command()(catalog.query)
app.command()(synth.synth)
app.command()(score.score)
app.command()(infer.infer)
app.command()(masks.mask)

layouts_app = _Typer(
    name="layouts",
    help="List the acquisition layout presets, or show one as a TOML file to copy and edit.",
    invoke_without_command=True,
    no_args_is_help=False,
)
layouts_app.callback()(sampling.layouts)
layouts_app.command("show")(sampling.layouts_show)
app.add_typer(layouts_app)

app.command()(sampling.sample)
app.command()(training.train)
app.command()(training.adapt)
app.command()(training.evaluate)
app.command()(training.models)
app.command()(view.view)


def main() -> None:
    """Console-script entry point."""
    app()
