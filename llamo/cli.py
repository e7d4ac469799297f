"""Shared by LLaMo's command-line tools: checks with clear errors before any Hub call or device work, and the one
way they load a model and its processor (`load_model_and_processor`)."""

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


def load_model_and_processor(name: str | os.PathLike, device: str | None = None, dtype: torch.dtype | None = None):
    """A LLaMo model and its processor through the public contract (`trust_remote_code=True`), in eval mode on `device`
    (`check_device`: by default cuda when there is one, else cpu).

    `name` is a model folder or Hub id, or a PEFT adapter folder (`adapter_config.json`, as `train_sft.py
    --keep_adapter` saves): its base model (`base_model_name_or_path`) is loaded, the adapter merged into it, and the
    processor read from the adapter folder, so every tool gets the same plain model class. `dtype`: the weights' dtype
    (default: transformers' own)."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    kwargs = {"trust_remote_code": True} if dtype is None else {"trust_remote_code": True, "dtype": dtype}
    if (pathlib.Path(name) / "adapter_config.json").is_file():
        from peft import PeftConfig, PeftModel

        base_name = PeftConfig.from_pretrained(name).base_model_name_or_path
        if base_name is None:
            raise ValueError(f"the adapter in {name} does not name its base model (base_model_name_or_path)")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name, **kwargs), name).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
    return model.to(check_device(device)).eval(), processor


__all__ = ["check_device", "check_model_path", "load_model_and_processor", "looks_local"]
