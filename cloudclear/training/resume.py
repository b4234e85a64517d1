"""The resume state of a training run: weights, optimiser moments and history after every epoch,
beside the checkpoint (``.NAME.resume.safetensors``), so ``--resume`` continues a killed run.

Tensors are safetensors, the rest JSON metadata: nothing is unpickled. Written through
:func:`cloudclear.outputs.atomic_output`, so a killed or failed write leaves the previous state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloudclear.errors import CheckpointError

RESUME_KEY = "cloudclear.resume"


def resume_path(out: Path) -> Path:
    """The resume state of a training run writing ``out``: ``.NAME.resume.safetensors`` beside it."""
    return out.with_name(f".{out.stem}.resume.safetensors")


def save_resume(path: Path, net: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Weights and optimiser moments as safetensors tensors; the rest as JSON metadata.

    Raises:
        OutputError: the state cannot be written (disk full, read-only folder); names the file.
    """
    from safetensors.torch import save

    from cloudclear.outputs import atomic_output

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if hasattr(v, "detach"):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    meta = dict(state, opt_scalars=scalars, opt_groups=opt["param_groups"])
    # serialised in memory and written with Python's file API: a full disk is an OSError naming
    # its cause
    data = save(tensors, metadata={RESUME_KEY: json.dumps(meta)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, overwrite=True, what="resume state") as tmp:
        tmp.write_bytes(data)


def resume_meta(path: Path) -> dict[str, Any]:
    """The JSON part of a resume state (settings, epoch, history), without loading tensors.

    Raises:
        CheckpointError: not a readable resume state.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta: dict[str, Any] = json.loads((f.metadata() or {})[RESUME_KEY])
    except Exception as exc:  # noqa: BLE001 - safetensors and JSON raise their own
        raise CheckpointError(f"{path}: not a readable resume state ({exc})") from None
    return meta


def load_resume(path: Path, net: Any, optimizer: Any, device: Any) -> dict[str, Any]:
    """Load a resume state's weights into ``net`` and moments into ``optimizer``; returns its
    metadata (epoch, best so far, history, ...).

    Raises:
        CheckpointError: not a readable resume state.
    """
    import torch
    from safetensors.torch import load_file

    meta = resume_meta(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors and JSON raise their own
        raise CheckpointError(f"{path}: not a readable resume state ({exc})") from None
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta.pop("opt_scalars").items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = torch.tensor(v) if name == "step" else v
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("opt_groups")})
    return meta
