"""The shipped checkpoints (safetensors + JSON card), installed as the package data ``cloudclear._models``.

This folder stays at the top of the repository; ``pyproject.toml`` maps it into the package so a
plain ``pip install .`` carries it, and :func:`cloudclear.nets.card.model_folders` finds it there
through :mod:`importlib.resources`. Nothing here is meant to be imported.
"""
