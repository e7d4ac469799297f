"""Stage 2 under PyTorch FSDP2 on CPU processes (gloo), driven directly; used by tests/test_engines.py.

accelerate runs an FSDP config on CPUs as plain DDP (it enables FSDP for GPU-like devices only), so this script
does what accelerate's FSDP2 preparation does: the wrap policy accelerate derives from the model
(`TRANSFORMER_BASED_WRAP` without a class name = the model's `_no_split_modules`), `fully_shard` on each matched
layer and then on the root, on a CPU device mesh. It trains a few AdamW steps on fixed batches and saves with
`llamo.saving.save_final_model`, the code path of train_sft.py. Run once in one process without sharding
(`--no_shard`) for the reference:

    torchrun --standalone --nproc_per_node 2 tests/engine_fsdp2.py --init_from STAGE1 --data facts.jsonl --output_dir OUT
    python tests/engine_fsdp2.py --no_shard --init_from STAGE1 --data facts.jsonl --output_dir REF
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from llamo.collator import LlamoDataCollator  # noqa: E402
from llamo.data import DataSource, encode_dataset, load_mixture  # noqa: E402
from llamo.saving import engine_of, save_final_model  # noqa: E402
from llamo.sft import LlamoModelConfig, load_model, lora_config, set_trainable  # noqa: E402


def shard(model: torch.nn.Module) -> list[str]:
    """FSDP2 as accelerate applies it: each layer the wrap policy matches, then the root. Returns the wrapped classes."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    wrapped = [module for module in model.modules() if policy(module)]
    names = sorted({type(module).__name__ for module in wrapped})  # before fully_shard renames the classes
    for module in reversed(wrapped):
        fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init_from", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--global_batch", type=int, default=4)
    parser.add_argument("--no_shard", action="store_true")
    args = parser.parse_args()

    distributed = not args.no_shard
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)

    from peft import get_peft_model

    model_args = LlamoModelConfig(stage=2, init_from=args.init_from, dtype="float32", lora_dropout=0.0)
    model, processor = load_model(model_args)
    set_trainable(model, model_args)
    model = get_peft_model(model, lora_config(model, model_args))
    model.train()
    if distributed:
        wrapped = shard(model)
        if rank == 0:
            print(f"fsdp2 units: {wrapped}; parameters are {engine_of(model)}")

    conversations, _ = load_mixture([DataSource.parse(args.data)], seed=0)
    dataset, _ = encode_dataset(conversations, processor, 512, None)
    collate = LlamoDataCollator(pad_token_id=processor.tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    per_rank = args.global_batch // world
    for step in range(args.steps):
        indices = list(range(step * args.global_batch, (step + 1) * args.global_batch))
        global_batch = collate([dataset[i] for i in indices])
        # Loss = sum over this rank's tokens / all tokens of the step; FSDP averages gradients over ranks, hence * world.
        num_items = int((global_batch["labels"][:, 1:] != -100).sum())
        batch = collate([dataset[i] for i in indices[rank * per_rank : (rank + 1) * per_rank]])
        loss = model(**batch, num_items_in_batch=num_items).loss * world
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if rank == 0:
            print(f"step {step}: loss {loss.item() / world:.6f}")
    save_final_model(model, args.output_dir, merge=True, processor=processor)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
