"""``cloudclear view``: a local page to look at scenes, masks and reconstructions, and run them.

:func:`serve` (and :func:`make_server`, the server object for tests) in :mod:`.server`; what is
shown in :mod:`.state`; images in :mod:`.render`; scores and runs in :mod:`.work`. The contract
between the server and the page (``static/``) is docs/view.md.
"""

from __future__ import annotations

from cloudclear.view.server import ViewServer, make_server, serve

__all__ = ["ViewServer", "make_server", "serve"]
