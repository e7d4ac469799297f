"""A non-editable install (`pip install .`) carries everything: the tokenizer assets, the remote-code files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_warnings_of_torch_geometric_under_newer_torch_are_filtered(tmp_path):
    # torch_geometric scripts helpers with torch.jit, which newer torch deprecates (Deprecation/FutureWarning)
    code = "import modeling_llamo"  # the project is installed (editable): importable from anywhere
    result = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-W", "error::FutureWarning", "-c", code],
                            cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_installed_wheel_ships_the_tokenizer_and_builds_the_tiny_model(tmp_path):
    # --no-build-isolation: setuptools from this environment, no download
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(tmp_path)],
                   check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    (wheel,) = tmp_path.glob("llamo_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "llamo/assets/tokenizer/tokenizer.json",
        "pipeline_llamo.py",
        "modeling_llamo.py",
        "projectors_llamo.py",
        "llamo/sft.py",
    } <= names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import llamo.sft, llamo.tiny\n"
        "assert llamo.tiny.__file__.startswith(sys.argv[1]), llamo.tiny.__file__\n"
        "model, processor = llamo.sft.load_model(llamo.sft.LlamoModelConfig())\n"  # the default --llm: the tiny model
        "print(type(model).__name__, len(processor.tokenizer))"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, str(site)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["LlamoForConditionalGeneration", "2048"]
