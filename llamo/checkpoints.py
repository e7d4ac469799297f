"""Which checkpoint to resume from: the newest *complete* one.

A process killed while `Trainer` saves a checkpoint (or a full disk) leaves a `checkpoint-N` folder that
`transformers.trainer_utils.get_last_checkpoint` still returns, and resuming from it fails with FileNotFoundError,
SafetensorError or JSONDecodeError. `Trainer` writes `trainer_state.json` last, so a checkpoint is complete when
that file parses and every weight / optimizer file in the folder opens; the check reads headers only (safetensors
header, zip central directory of `torch.save` files), not the tensors.

Stage-1 checkpoints hold only what trains (`trainable_state_dict`): with a real LLM frozen, a whole-model save would
write the LLM again every `--save_steps` (514 MB for SmolLM2-135M, 13 GB for a 7B model) for nothing. A marker file
names the saved keys; resuming loads exactly those (`load_trainable_state`) and refuses a checkpoint whose keys are not
what the model trains.
"""

from __future__ import annotations

import json
import pathlib
import re
import warnings
import zipfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn


TRAINABLE_MARKER = "llamo_trainable_only.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_NAMES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _check_safetensors(path: pathlib.Path) -> None:
    with safe_open(str(path), framework="pt") as handle:  # raises on a truncated or garbled header
        handle.keys()


def _check_torch_file(path: pathlib.Path) -> None:
    """`torch.save` writes a zip archive: a cut-off file has no central directory and does not open."""
    with zipfile.ZipFile(path) as archive:
        archive.namelist()


def _check_file(path: pathlib.Path) -> None:
    if path.suffix == ".safetensors":
        _check_safetensors(path)
    elif path.suffix in (".pt", ".pth", ".bin"):
        _check_torch_file(path)


def checkpoint_problem(folder: str | pathlib.Path) -> str | None:
    """Why `folder` cannot be resumed from, or None when it is complete."""
    folder = pathlib.Path(folder)
    state_path = folder / "trainer_state.json"
    if not state_path.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"trainer_state.json does not parse ({error})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no global_step"
    weights = [folder / name for name in WEIGHT_NAMES if (folder / name).is_file()]
    for index_name in SHARD_INDEXES:
        if (folder / index_name).is_file():
            try:
                shards = set(json.loads((folder / index_name).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError) as error:
                return f"{index_name} does not parse ({error})"
            missing = sorted(name for name in shards if not (folder / name).is_file())
            if missing:
                return f"weight shard(s) missing: {', '.join(missing)}"
            weights += [folder / name for name in sorted(shards)]
    deepspeed_tag = folder / "latest"  # DeepSpeed keeps weights and optimizer in a global_step* folder
    if deepspeed_tag.is_file():
        tag_folder = folder / deepspeed_tag.read_text().strip()
        if not tag_folder.is_dir():
            return f"DeepSpeed folder {tag_folder.name} missing"
        weights += sorted(tag_folder.glob("*.pt"))
    if not weights:
        return "no weights file"
    others = [
        path for path in sorted(folder.iterdir()) if path.is_file() and path.suffix in (".pt", ".pth") and path not in weights
    ]
    for path in [*weights, *others]:
        try:
            _check_file(path)
        except Exception as error:  # noqa: BLE001 -- any failure to open is what we are looking for
            return f"{path.name} does not open ({type(error).__name__}: {error})"
    return None


def last_complete_checkpoint(output_dir: str | pathlib.Path) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` that is complete (see `checkpoint_problem`), or None.

    Newer incomplete ones are named in a warning with the reason, so a torn save is never resumed from silently."""
    output_dir = pathlib.Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        (int(match.group(1)), path)
        for path in output_dir.iterdir()
        if path.is_dir() and (match := CHECKPOINT_PATTERN.match(path.name))
    )
    skipped = []
    for _, path in reversed(candidates):
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                warnings.warn(
                    f"resuming from {path.name}; skipped incomplete newer checkpoint(s): {'; '.join(skipped)}", stacklevel=2
                )
            return str(path)
        skipped.append(f"{path.name} ({problem})")
    if skipped:
        warnings.warn(f"no complete checkpoint in {output_dir}; incomplete: {'; '.join(skipped)}", stacklevel=2)
    return None


def resolve_resume(resume: str | bool | None, output_dir: str | pathlib.Path) -> str | bool | None:
    """`--resume_from_checkpoint` as given: `last` / `True` / `true` mean the newest complete checkpoint (None, so
    training starts fresh, when there is none); anything else is passed on unchanged."""
    if resume is True or resume in ("last", "True", "true"):
        return last_complete_checkpoint(output_dir)
    return resume


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints of the trained part only


def trainable_only_checkpoints(model: nn.Module) -> bool:
    """Whether checkpoints of `model` should hold its trained part only: a model whose parameters are whole on this
    process (one process, DDP; not ZeRO-3 / FSDP shards), not a PEFT model (whose checkpoints already are adapters),
    with some frozen parameters."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return False
    parameters = list(model.parameters())
    if any(hasattr(p, "ds_id") or type(p).__name__ in ("DTensor", "FlatParameter") for p in parameters):
        return False
    return any(p.requires_grad for p in parameters) and not all(p.requires_grad for p in parameters)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, and the buffers of the modules that hold them (the GIN's BatchNorm statistics)."""
    trained_modules = {
        name for name, module in model.named_modules() if any(p.requires_grad for p in module.parameters(recurse=False))
    }
    names = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    names |= {name for name, _ in model.named_buffers() if name.rpartition(".")[0] in trained_modules}
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items() if name in names}


def write_trainable_marker(folder: pathlib.Path, keys: list[str]) -> None:
    """The marker of a trainable-only checkpoint, naming the keys it holds."""
    (folder / TRAINABLE_MARKER).write_text(json.dumps({"keys": sorted(keys)}, indent=1))


def is_trainable_only(folder: str | pathlib.Path) -> bool:
    return (pathlib.Path(folder) / TRAINABLE_MARKER).is_file()


def load_trainable_state(model: nn.Module, folder: str | pathlib.Path) -> None:
    """Load a trainable-only checkpoint into `model`; its keys must be exactly what `model` trains."""
    folder = pathlib.Path(folder)
    state = load_file(str(folder / "model.safetensors"))
    expected = set(trainable_state_dict(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"{folder} does not hold what this model trains: missing {missing[:5]} ({len(missing)}), "
            f"not trained here {extra[:5]} ({len(extra)}); resume with the same stage and options"
        )
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{folder}: keys not in the model: {result.unexpected_keys[:5]}")
