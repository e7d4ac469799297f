"""Saving the final model from any training engine: gathered, rebuilt on rank 0, written atomically, verified.

Under DeepSpeed ZeRO-3 and FSDP each rank holds only a shard of the parameters, so `save_pretrained` on rank 0 of
the trained model writes empty or partial tensors (and exits 0). Here the final folder is made in four steps:

1. `full_state_dict`: a collective call on every rank gathers the whole state dict (ZeRO-3: parameter by parameter
   with `deepspeed.zero.GatheredParameters`; FSDP2: `torch.distributed.checkpoint`'s full state dict; DDP, ZeRO-1/2
   and one process: the local copy, which is whole).
2. `rebuild_model` (rank 0): a model of the same class and config, made on the meta device (no memory, no random
   init), with the PEFT adapter of the trained model when it has one, takes the gathered tensors
   (`load_state_dict(strict=True, assign=True)`: a missing key or a tensor of the wrong shape is an error). LoRA is
   merged with PEFT's `merge_and_unload` unless the adapter is kept.
3. Its configs are made ready for inference (`make_inference_ready`: the KV cache training turned off is on again);
   it is written to a temporary folder next to the final files and checked (`verify_saved_weights`).
4. `publish`: the files are moved into the output folder, `config.json` / `adapter_config.json` last; the old
   config goes first. A kill at any point leaves a folder without a config, which nothing loads as a model.
"""

from __future__ import annotations

import contextlib
import copy
import os
import pathlib
import shutil

import torch
from safetensors import safe_open
from torch import nn


CONFIG_FILES = ("config.json", "adapter_config.json")  # what makes a folder loadable: published last
WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "adapter_model*.safetensors", "pytorch_model*.bin")
INCOMPLETE_DIR = ".incomplete-final-save"
PARAMETER_KINDS = {"zero3": "partitioned by DeepSpeed ZeRO-3", "fsdp2": "sharded DTensors", "local": "whole on every rank"}


def make_inference_ready(model: nn.Module) -> nn.Module:
    """Restore the KV cache (`use_cache=True`) in `model`'s config, its text config and its generation config, in place;
    returns `model`. Every folder a user loads (trained, built, converted, the stage-0 base LLM) goes through it.

    Training turns the cache off and the setting is saved with the model unless undone: transformers' `Trainer` writes
    `TrainingArguments.use_cache` (False by default) into `model.config.use_cache`, and a language model saved after
    training (the tiny pipelines' stage-0 base LLM) carries `use_cache: false` in its config, which
    `GenerationConfig.from_model_config` copies into the generation config of a model built around it. `generate`
    follows `generation_config.use_cache` (and a plain forward the text config's): without a cache it recomputes the
    whole sequence at every new token, and LLaMo's graph encoder and projector with it (19 GIN runs for 24 new tokens,
    22x slower decoding on the real backbone). Works on a PreTrainedModel or a PeftModel around one.
    """
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = base.config
    config.use_cache = True
    text_config = config.get_text_config(decoder=True)
    if text_config is not config:
        text_config.use_cache = True
    generation_config = getattr(base, "generation_config", None)
    if generation_config is not None:
        generation_config.use_cache = True
    return model


class SavedModelError(RuntimeError):
    """The written weights are not the model's (missing, empty or wrong-shaped tensors)."""


def is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def engine_of(model: nn.Module) -> str:
    """'zero3' (DeepSpeed-partitioned parameters), 'fsdp2' (DTensor parameters), 'fsdp1' (flat parameters) or 'local'."""
    from torch.distributed.tensor import DTensor

    parameters = list(model.parameters())
    if any(hasattr(parameter, "ds_id") for parameter in parameters):
        return "zero3"
    if any(isinstance(parameter, DTensor) for parameter in parameters):
        return "fsdp2"
    if any(type(parameter).__name__ == "FlatParameter" for parameter in parameters):
        return "fsdp1"
    return "local"


def refuse_unsupported_engines(training_args) -> None:
    """Fail before any compute on an engine whose saving is known wrong: FSDP1 (PEFT's auto-wrap unshards
    `nn.MultiheadAttention.out_proj` on its own, and flat parameters need FSDP1's own state-dict API). FSDP2 is
    the supported path."""
    launched_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    version = os.environ.get("FSDP_VERSION") if launched_fsdp else None
    if training_args.fsdp and not launched_fsdp:
        version = str((training_args.fsdp_config or {}).get("version", 2))
    if version == "1":
        raise ValueError("FSDP1 is not supported by train_sft.py: set `fsdp_version: 2` (configs/accelerate/fsdp.yaml)")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict as CPU tensors on rank 0 (an empty dict on other ranks). Collective: call it on every rank."""
    engine = engine_of(model)
    main = is_main_process()
    if engine == "fsdp1":
        raise ValueError("FSDP1 (flat parameters) is not supported: use FSDP2 (`fsdp_version: 2`, configs/accelerate/fsdp.yaml)")
    if engine == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return dict(state) if main else {}
    if engine == "zero3":
        import deepspeed

        state = {}
        # One parameter at a time, so no rank ever holds more than one whole tensor beyond its shard (a 7B model).
        for name, tensor in model.state_dict(keep_vars=True).items():
            context = (
                deepspeed.zero.GatheredParameters([tensor], modifier_rank=None)
                if hasattr(tensor, "ds_id")
                else contextlib.nullcontext()
            )
            with context:
                if main:
                    state[name] = tensor.detach().cpu().clone()
        return state
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()} if main else {}


@contextlib.contextmanager
def without_zero3_init():
    """Build modules as plain tensors even while a DeepSpeed ZeRO-3 config is active (rank 0 alone rebuilds the
    model; `zero.Init` there would partition it and wait for the other ranks)."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = reference


def rebuild_model(trained: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `trained` (a PreTrainedModel or a PeftModel around one) holding `state`, built without allocating.
    Raises if `state` misses a key or a tensor has the wrong shape."""
    from peft import PeftModel

    base = trained.get_base_model() if isinstance(trained, PeftModel) else trained
    with without_zero3_init(), torch.device("meta"):
        model = type(base)(copy.deepcopy(base.config))
        # The constructor derives a generation config from the model config: keep the trained model's own instead
        # (special tokens, suppressed tokens, the converter's decoding defaults).
        if getattr(base, "generation_config", None) is not None:
            model.generation_config = copy.deepcopy(base.generation_config)
        if isinstance(trained, PeftModel):
            model = PeftModel(
                model, copy.deepcopy(trained.peft_config[trained.active_adapter]), adapter_name=trained.active_adapter
            )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise SavedModelError(f"the gathered weights do not fit the model: {error}") from error
    # Buffers outside the state dict (rotary frequencies) are whole on every engine: take the trained ones.
    trained_buffers = dict(trained.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            module_name, _, buffer_name = name.rpartition(".")
            model.get_submodule(module_name)._buffers[buffer_name] = trained_buffers[name].detach().cpu().clone()
    # Written in LLaMo's own key layout, whatever renaming loaded the trained model (an LLM's `key_mapping` in
    # stage 1; a prefix change under ZeRO-3): no conversion is reverted on save.
    (model.get_base_model() if isinstance(model, PeftModel) else model)._weight_conversions = []
    return model.eval()


def saved_tensor_shapes(folder: pathlib.Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor in the safetensors files of `folder` (headers only, nothing loaded)."""
    shapes = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safetensors handles are not dicts)
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def verify_saved_weights(
    folder: pathlib.Path, expected: dict[str, tuple[int, ...]], may_be_absent: set[str] = frozenset()
) -> None:
    """Raise `SavedModelError` unless `folder` holds exactly the `expected` tensors, each with its shape and none empty
    (`may_be_absent`: tied weights that save_pretrained leaves out)."""
    saved = saved_tensor_shapes(folder)
    problems = []
    if not saved:
        problems.append("no safetensors weights were written")
    for name, shape in saved.items():
        if name not in expected:
            problems.append(f"{name}: not a tensor of the model")
        elif shape != tuple(expected[name]):
            problems.append(f"{name}: shape {list(shape)}, the model's is {list(expected[name])}")
        elif 0 in shape:
            problems.append(f"{name}: empty tensor {list(shape)}")
    missing = sorted(set(expected) - set(saved) - set(may_be_absent))
    if missing:
        problems.append(f"missing tensors: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if problems:
        raise SavedModelError(f"the model written to {folder} is wrong:\n  " + "\n  ".join(problems[:20]))


def expected_shapes(model: nn.Module, adapter: bool) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """What `save_pretrained` of `model` must write: names and shapes, and the names it may leave out (tied)."""
    if adapter:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
        return {name: tuple(tensor.shape) for name, tensor in state.items()}, set()
    state = model.state_dict()
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    return {name: tuple(tensor.shape) for name, tensor in state.items()}, tied


def publish(staging: pathlib.Path, output_dir: pathlib.Path) -> None:
    """Move the files of `staging` into `output_dir`; the folder has no config (so does not load) until the end."""
    for name in CONFIG_FILES:
        (output_dir / name).unlink(missing_ok=True)
    for pattern in WEIGHT_PATTERNS:  # stale weights of an earlier run (e.g. shards the new model does not have)
        for path in output_dir.glob(pattern):
            path.unlink()
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name in CONFIG_FILES)
    for path in files:
        target = output_dir / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(staging)


def save_final_model(trained: nn.Module, output_dir: str | os.PathLike, merge: bool, processor=None) -> nn.Module | None:
    """Write the final model folder from `trained` (the unwrapped model, a PeftModel in stage 2) on any engine.

    Call it on every rank (the gather is collective). Rank 0 writes `output_dir`: merged weights when `merge`,
    else the model as it is (a PEFT adapter for a PeftModel); then the processor. The saved configs are made ready
    for inference (`make_inference_ready`: the KV cache the trainer turned off is on again). Returns the saved model on
    rank 0 (whole, on the CPU, e.g. for `push_to_hub`) and None elsewhere. Raises `SavedModelError` when what was
    written is not the model.
    """
    from peft import PeftModel

    engine = engine_of(trained)
    if engine == "local":  # whole on every rank (one process, DDP): nothing to gather, quantized layers kept as they are
        if not is_main_process():
            return None
        model = trained.eval()
        (model.get_base_model() if isinstance(model, PeftModel) else model)._weight_conversions = []
    else:
        state = full_state_dict(trained)
        if not is_main_process():
            return None
        print(f"final model: gathered from {engine} parameters ({PARAMETER_KINDS[engine]})", flush=True)
        model = rebuild_model(trained, state)
        del state
    if merge:
        model = model.merge_and_unload()
    make_inference_ready(model)  # training saved `use_cache: false` (transformers' Trainer): generate needs the cache
    output_dir = pathlib.Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / INCOMPLETE_DIR
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    if processor is not None:
        processor.save_pretrained(staging)
    expected, may_be_absent = expected_shapes(model, adapter=isinstance(model, PeftModel))
    verify_saved_weights(staging, expected, may_be_absent)
    publish(staging, output_dir)
    return model
