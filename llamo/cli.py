"""Checks shared by LLaMo's command-line tools: clear errors before any Hub call or device work."""

from __future__ import annotations

import os
import pathlib
import re

import torch


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def looks_local(name: str) -> bool:
    """Whether `name` is meant as a local path: absolute, `./`, `~`, more than one `/`, a Windows separator, not
    a valid Hub id, or `folder/name` whose `folder` exists here (`outputs/llamo-tiny`)."""
    if name.startswith((".", "~", "/")) or "\\" in name or name.count("/") > 1 or not HUB_ID.match(name):
        return True
    return "/" in name and pathlib.Path(name.split("/", 1)[0]).is_dir()


def check_model_path(name: str, flag: str) -> str:
    """`name` unchanged when it is an existing folder or a Hub id; a clear ValueError for a local path that does not
    exist (instead of transformers' "couldn't connect to the Hub" or "Repo id must be in the form ...")."""
    path = pathlib.Path(os.path.expanduser(name))
    if path.exists() or not looks_local(name):
        if path.exists() and not path.is_dir():
            raise ValueError(f"{flag} {name!r} is a file: pass the model folder (with config.json) or a Hub id")
        return str(path) if name.startswith("~") else name
    parent = next((p for p in path.absolute().parents if p.is_dir()), None)
    nearby = sorted(child.name for child in parent.iterdir() if child.is_dir())[:10] if parent is not None else []
    raise ValueError(f"{flag} {name!r}: no such folder (folders in {parent}: {', '.join(nearby) or 'none'})")


def check_device(device: str | None) -> str:
    """The device to run on (default: cuda when available, else cpu); refuses cuda / mps that this machine lacks."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":", 1)[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: CUDA is not available here (torch {torch.__version__}, CPU build or no GPU); use --device cpu"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: Apple MPS is not available here; use --device cpu")
    return device


__all__ = ["check_device", "check_model_path", "looks_local"]
