"""The CPU training recipe of LLaMo-SmolLM2: two LLaMo stages around SmolLM2-135M-Instruct, and the same stage 2
without a graph (`projector_type none`) for the comparison, on the real molecule-text data of `../shared/data`.

    python scripts/train_smollm2.py --output_dir outputs/smollm2            # everything; rerun to resume
    python scripts/train_smollm2.py --output_dir outputs/smollm2 --only stage1

Steps (each one `train_sft.py` command, printed before it runs, so any can be rerun alone):

1. data: the caption files (ChEBI-20 validation, PubChem324k validation, GIT-Mol toy captions: 8,451 molecules),
   PubChem IUPAC names (train + validation files), a QM9 sample (HOMO, LUMO and gap questions) and computed-fact
   questions (`llamo.instructions`) about the caption and IUPAC molecules, in `OUTPUT_DIR/data/`. One molecule-disjoint
   dev split for every source: `llamo.data.is_held_out` (10 %, by the SMILES the prompt shows) holds the same molecules
   out of every file; `train_sft.py --eval_fraction` applies it and `llamo.release` evaluates on it.
2. stage 1 (graph-language alignment): the GIN and the projector learn the captions, SmolLM2 frozen.
3. stage 2 (instruction tuning): projector + GIN + LoRA (r 16, every linear layer of SmolLM2) on the mixture,
   saved as an adapter over the stage-1 folder.
4. no-graph arm: stage 2 built directly around SmolLM2 with `projector_type none` (SMILES text only), same data,
   steps and seed.

All of it in bf16 autocast on the CPU (the GIN and the projector's LayerNorm compute in fp32), checkpoints every
`--save_steps` holding only what trains (graph side, LoRA; `train_sft.py` keeps them small), and a rerun resumes every
unfinished stage from its newest complete checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

from llamo.recipe import DEFAULT_DATA, HELD_OUT, mixture_specs, prepare_data


ROOT = pathlib.Path(__file__).resolve().parent.parent
# glibc hands large freed blocks back to the kernel (mmap / trim thresholds), so every step's activations and logits
# (hundreds of MB) are page-faulted in anew; on the 2-core VM here that doubled the step time (bare SmolLM2 forward +
# backward, 8 x 200 tokens, one thread: 6-8 s with 0.6-1.2 s of system time, 3.3 s with these settings and none).
TRAINING_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "MALLOC_MMAP_THRESHOLD_": str(1 << 34),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 34),
}


def log(message: str) -> None:
    print(f"\n[smollm2] {message}", flush=True)


def run_stage(arguments: list[str], output_dir: pathlib.Path) -> None:
    """One `train_sft.py` run, skipped when its folder is complete, resumed from its newest checkpoint otherwise."""
    if (output_dir / "training_summary.json").is_file():
        log(f"{output_dir} is complete: skipped")
        return
    if any(output_dir.glob("checkpoint-*")):
        arguments = [*arguments, "--resume_from_checkpoint", "last"]
    command = [sys.executable, str(ROOT / "train_sft.py"), *arguments, "--output_dir", str(output_dir)]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, env={**os.environ, **TRAINING_ENVIRONMENT})


def common_arguments(args: argparse.Namespace, steps: int, learning_rate: float) -> list[str]:
    return [
        "--bf16", "true", "--max_length", str(args.max_length), "--per_device_train_batch_size", str(args.batch_size // args.accumulation),
        "--gradient_accumulation_steps", str(args.accumulation),
        "--max_steps", str(steps), "--max_train_samples", str(steps * args.batch_size), "--learning_rate", str(learning_rate),
        "--lr_scheduler_type", "cosine", "--warmup_steps", str(max(steps // 20, 5)), "--logging_steps", "10",
        "--save_steps", str(args.save_steps), "--save_total_limit", "1", "--seed", str(args.seed),
        "--eval_fraction", str(HELD_OUT), "--dataloader_num_workers", "0", "--train_sampling_strategy", "group_by_length",
    ]  # fmt: skip


def run_record(folder: pathlib.Path) -> dict:
    """What a finished `train_sft.py` run says of itself (`training_summary.json`), for the release's record."""
    summary = json.loads((folder / "training_summary.json").read_text())
    keep = ("stage", "steps", "seconds", "train_loss", "train_examples", "datasets", "timing", "trainable_parameters")
    record = {key: summary[key] for key in keep if key in summary}
    arguments = summary["model_arguments"]
    record["model_arguments"] = {key: arguments[key] for key in MODEL_ARGUMENTS if key in arguments}
    record["datasets"] = [spec.replace(str(ROOT) + "/", "") for spec in record.get("datasets", [])]
    return record


MODEL_ARGUMENTS = ("projector_type", "config_overrides", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                   "train_graph_encoder", "chat_template")  # fmt: skip


def pack(out: pathlib.Path, args: argparse.Namespace, llm: str) -> None:
    """The trained weights that are LLaMo's own into `weights/` (`llamo.release.pack_release`), with their record."""
    from llamo.release import pack_release
    from llamo.smollm2 import GGUF_SHA256, PACKAGE, PACKAGE_VERSION

    base = {"name": f"SmolLM2-135M-Instruct ({PACKAGE}=={PACKAGE_VERSION}, Q4_1 GGUF)", "gguf_sha256": GGUF_SHA256,
            "vocab_size": 49152, "license": "apache-2.0"}  # fmt: skip
    recipe = {"command": f"python scripts/train_smollm2.py --stage1_steps {args.stage1_steps} --stage2_steps {args.stage2_steps} --seed {args.seed}", "seed": args.seed,
              "batch_size": args.batch_size, "accumulation": args.accumulation, "max_length": args.max_length, "held_out_fraction": HELD_OUT,
              "notes": args.notes}  # fmt: skip
    graph, nograph = out / "llamo-smollm2", out / "nograph"
    pack_release(
        graph, out / "stage1", ROOT / "weights" / "llamo-smollm2",
        build={"projector_type": "multilevel", "config_overrides": {"projector_attention": "normed"}, "chat_template": "auto"},
        base=base, extra={"recipe": recipe, "stages": [run_record(out / "stage1"), run_record(graph)]},
    )  # fmt: skip
    checkpoint = max(nograph.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    pack_release(
        checkpoint, nograph, ROOT / "weights" / "nograph-smollm2",
        build={"projector_type": "none", "chat_template": "auto"},
        base=base, extra={"recipe": recipe, "stages": [run_record(nograph)]},
    )  # fmt: skip
    log(f"packed {ROOT / 'weights'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=pathlib.Path, default=ROOT / "outputs" / "smollm2")
    parser.add_argument("--data_dir", type=pathlib.Path, default=DEFAULT_DATA, help="the recipe's data (llamo/recipe.py)")
    parser.add_argument("--llm", default=None, help="the base LLM folder (default: llamo.smollm2's converted folder)")
    parser.add_argument("--stage1_steps", type=int, default=50)
    parser.add_argument("--stage2_steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=8, help="examples per optimizer step")
    parser.add_argument(
        "--accumulation",
        type=int,
        default=2,
        help="gradient accumulation: batch_size / accumulation examples per forward (memory)",
    )
    parser.add_argument("--max_length", type=int, default=320)
    parser.add_argument("--save_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--notes", default="", help="pack: what release.json should say about the run besides its records")
    parser.add_argument("--only", choices=("data", "stage1", "stage2", "nograph", "pack"), default=None)
    args = parser.parse_args()

    from llamo.smollm2 import ensure_smollm2

    llm = args.llm or str(ensure_smollm2())
    out = args.output_dir
    try:
        files = prepare_data(args.data_dir, out / "data", args.seed)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    if args.only == "data":
        return
    stage1, stage2, nograph = out / "stage1", out / "llamo-smollm2", out / "nograph"
    graph_side = ["--config_overrides", "projector_attention=normed"]
    lora = ["--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05", "--lora_target_modules", "all-linear"]
    if args.only in (None, "stage1"):
        log("stage 1: GIN + projector learn the captions (SmolLM2 frozen)")
        run_stage(
            ["--stage", "1", "--llm", llm, *graph_side, "--datasets", f"caption:{files['captions']}",
             *common_arguments(args, args.stage1_steps, 1e-3)],
            stage1,
        )  # fmt: skip
    if args.only in (None, "stage2"):
        log("stage 2: projector + GIN + LoRA learn the instruction mixture")
        run_stage(
            ["--stage", "2", "--init_from", str(stage1), "--train_graph_encoder", "--keep_adapter", *lora,
             "--datasets", *mixture_specs(files), *common_arguments(args, args.stage2_steps, 3e-4)],
            stage2,
        )  # fmt: skip
    if args.only in (None, "nograph"):
        log("no-graph arm: the same stage 2 around SmolLM2 with projector_type none (SMILES text only)")
        run_stage(
            ["--stage", "2", "--llm", llm, "--projector_type", "none", *lora, "--keep_checkpoints",
             "--datasets", *mixture_specs(files), *common_arguments(args, args.stage2_steps, 3e-4)],
            nograph,
        )  # fmt: skip
    if args.only in (None, "pack"):
        pack(out, args, llm)


if __name__ == "__main__":
    main()
