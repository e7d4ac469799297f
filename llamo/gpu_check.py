"""GPU check: LLaMo's recipe at real scale on one GPU, in a few minutes (`scripts/gpu_check.sh`).

Builds a randomly initialized ~1B Llama-shaped language model (no download), then, in bf16:
stage 1 and stage 2 with `train_sft.py` (sdpa, and flash-attention when `flash_attn` is installed), stage 2 under
DeepSpeed ZeRO-2 on one GPU (`accelerate launch`), and batched generation with the stage-2 model. For each it
prints the median step time, tokens per second and peak GPU memory, and writes them to `gpu_check.json`.

    scripts/gpu_check.sh                      # on a GPU machine, after `pip install -r requirements.txt`
    scripts/gpu_check.sh --cpu --tiny         # the same code path on a CPU with a tiny model (tested)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
import time

import torch
from transformers import LlamaForCausalLM

from llamo.timing import peak_gpu_memory, synchronize


ROOT = pathlib.Path(__file__).resolve().parent.parent
# TinyLlama-1.1B's shape: 22 layers of width 2048, grouped-query attention (32 heads, 4 key/value heads).
BILLION_CONFIG = dict(
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4
)


def print_result(result: dict) -> None:
    peak = result["peak_gpu_memory_gib"]
    print(
        f"[gpu_check] {result['run']:<28} step {result['step_s'] * 1000:8.1f} ms   {result['tokens_per_s']:10.1f} tokens/s   "
        f"peak GPU memory {'n/a (CPU)' if peak is None else f'{peak:.2f} GiB'}",
        flush=True,
    )


def make_llm(folder: pathlib.Path, tiny: bool, dtype: torch.dtype) -> int:
    """A randomly initialized Llama-shaped causal LM with LLaMo's tiny tokenizer, saved like a Hub checkpoint."""
    from llamo.tiny import load_tiny_tokenizer, tiny_llama_config

    tokenizer = load_tiny_tokenizer()
    config = tiny_llama_config(tokenizer, **({} if tiny else BILLION_CONFIG), max_position_embeddings=2048)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.num_parameters()


def make_data(path: pathlib.Path, molecules: int) -> None:
    from llamo.instructions import generate_examples

    with (ROOT / "data" / "chebi20_smiles.tsv").open(encoding="utf-8") as handle:
        smiles = [row["smiles"] for row in csv.DictReader(handle, delimiter="\t")][:molecules]
    rows = generate_examples(smiles, questions_per_molecule=2, seed=0)
    path.write_text("\n".join(json.dumps(row) for row in rows))


def training_argv(args, stage: int, output_dir: pathlib.Path, attention: str, source: list[str]) -> list[str]:
    precision = ["--dtype", "float32", "--bf16", "false"] if args.cpu else ["--dtype", "bfloat16", "--bf16", "true"]
    return [
        "--stage", str(stage), *source, "--datasets", f"messages:{args.data}", "--output_dir", str(output_dir),
        "--attn_implementation", attention, "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--max_length", "512", "--learning_rate", "1e-4", "--save_strategy", "no", "--logging_steps", "1", "--seed", "0",
        *precision, *(["--use_cpu", "true"] if args.cpu else []),
    ]  # fmt: skip


def run_stage(argv: list[str], name: str, launcher: list[str] | None = None, env: dict | None = None) -> dict:
    """One `train_sft.py` run in its own process (as a user runs it); its timing from `training_summary.json`."""
    output_dir = pathlib.Path(argv[argv.index("--output_dir") + 1])
    command = [*(launcher or [sys.executable]), str(ROOT / "train_sft.py"), *argv]
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    result = {"run": name, **json.loads((output_dir / "training_summary.json").read_text())["timing"]}
    print_result(result)
    return result


def run_zero2(args, stage1: pathlib.Path) -> dict:
    """Stage 2 under DeepSpeed ZeRO-2 on one process (one GPU), through accelerate launch."""
    ds_config = args.output_dir / "zero2.json"
    ds_config.write_text(json.dumps({
        "zero_optimization": {"stage": 2}, "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto",
    }))  # fmt: skip
    accelerate_config = args.output_dir / "zero2.yaml"
    accelerate_config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\n"
        f"deepspeed_config:\n  deepspeed_config_file: {ds_config}\n  zero3_init_flag: false\n"
        "num_machines: 1\nnum_processes: 1\nmachine_rank: 0\nrdzv_backend: static\nsame_network: true\nuse_cpu: false\n"
    )
    argv = training_argv(args, 2, args.output_dir / "stage2-zero2", "sdpa", ["--init_from", str(stage1)])
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"} if args.cpu else None
    return run_stage(argv, "stage 2, DeepSpeed ZeRO-2", launcher=launcher, env=env)


def generation_check(args, folder: pathlib.Path, batch_size: int = 8, new_tokens: int = 64) -> dict:
    """Batched greedy generation with the stage-2 model: tokens generated per second and peak memory."""
    from llamo.cli import load_model_and_processor

    device = "cpu" if args.cpu else "cuda"
    model, processor = load_model_and_processor(folder, device, dtype=torch.float32 if args.cpu else torch.bfloat16)
    processor.tokenizer.padding_side = "left"
    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "c1ccccc1", "CCO", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
              "C1CCCCC1", "OC(=O)CC(O)(CC(=O)O)C(=O)O", "CC(=O)Nc1ccc(O)cc1"]  # fmt: skip
    conversations = [
        [{"role": "user", "content": [{"type": "molecule", "smiles": s}, {"type": "text", "text": "Describe this molecule."}]}]
        for s in (smiles * batch_size)[:batch_size]
    ]
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    ).to(device)
    peak_gpu_memory()  # reset the peak
    durations = []
    for _ in range(2):  # the first call warms up kernels
        synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        synchronize()
        durations.append(time.perf_counter() - start)
    generated = (output.shape[1] - inputs["input_ids"].shape[1]) * batch_size
    result = {"run": f"generate batch {batch_size}", "steps": new_tokens, "step_s": durations[-1] / new_tokens,
              "tokens_per_s": generated / durations[-1], **peak_gpu_memory()}  # fmt: skip
    print_result(result)
    return result


def attention_implementations(cpu: bool) -> list[str]:
    import importlib.util

    found = ["sdpa"]
    if not cpu and importlib.util.find_spec("flash_attn") is not None:
        found.append("flash_attention_2")
    return found


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU in fp32 (with --tiny: the smoke test)")
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama instead of the ~1B one")
    parser.add_argument("--output_dir", type=pathlib.Path, default=ROOT / "outputs" / "gpu_check")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per training run (default 30; 2 with --tiny)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--skip_zero2", action="store_true", help="leave out the DeepSpeed run")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no GPU found: run on a GPU machine, or pass --cpu --tiny for the CPU smoke run")
    args.steps = args.steps or (2 if args.tiny else 30)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.data = args.output_dir / "data.jsonl"
    started = time.time()

    llm = args.output_dir / "llm"
    parameters = make_llm(llm, args.tiny, torch.float32 if args.cpu else torch.bfloat16)
    print(f"[gpu_check] random Llama-shaped LM: {parameters / 1e6:,.1f}M parameters -> {llm}", flush=True)
    make_data(args.data, molecules=16 if args.tiny else 400)

    results = []
    stage1 = None
    for attention in attention_implementations(args.cpu):
        folder = args.output_dir / f"stage1-{attention}"
        results.append(run_stage(training_argv(args, 1, folder, attention, ["--llm", str(llm)]), f"stage 1, {attention}"))
        stage1 = stage1 or folder
    stage2 = args.output_dir / "stage2"
    results.append(run_stage(training_argv(args, 2, stage2, "sdpa", ["--init_from", str(stage1)]), "stage 2 (LoRA), sdpa"))
    if not args.skip_zero2:
        results.append(run_zero2(args, stage1))
    results.append(generation_check(args, stage2, batch_size=args.batch_size))

    (args.output_dir / "gpu_check.json").write_text(json.dumps({"device": device_name(args.cpu), "results": results}, indent=2))
    print(f"[gpu_check] done in {time.time() - started:.0f} s on {device_name(args.cpu)} -> {args.output_dir / 'gpu_check.json'}")
    return results


def device_name(cpu: bool) -> str:
    return "CPU" if cpu else torch.cuda.get_device_name()


if __name__ == "__main__":
    main()
