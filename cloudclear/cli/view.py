"""``cloudclear view``: serve a local page to look at scenes, masks and reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def view(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Catalogs (.gpkg, or a folder holding cloudclear.gpkg) and output folders.", metavar="PATHS"
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (localhost by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: a free one).")] = 0,
    no_open: Annotated[bool, typer.Option("--no-open", help="Do not open a browser.")] = False,
) -> None:
    """Serve a local page showing a catalog's dates, masks and reconstructions, and running infer.

    Prints the page's URL (with its access token) and serves until Ctrl-C. Nothing is fetched
    from the internet; only the given catalogs and folders are read.

    Examples:
      cloudclear view out/sample.gpkg out/
      cloudclear view out/ --port 8800 --no-open
    """
    from cloudclear.view import serve

    if not 0 <= port <= 65535:
        raise typer.BadParameter("--port must be 0..65535")
    try:
        serve([str(p) for p in paths or [Path(".")]], host, port, open_browser=not no_open, on_url=typer.echo)
    except KeyboardInterrupt:
        typer.echo("cloudclear view: stopped")
