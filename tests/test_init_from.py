"""`--init_from` never runs code shipped in the folder it continues (issue 18 problem 11)."""

from __future__ import annotations

from conftest import MOLECULES

from llamo.sft import LlamoModelConfig, load_model
from processing_llamo import LlamoProcessor


def test_init_from_loads_the_local_classes_without_executing_the_folders_code(tmp_path, tiny, capfd):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    marker = tmp_path / "executed"
    for name in (
        "processing_llamo.py",
        "modeling_llamo.py",
        "projectors_llamo.py",
        "configuration_llamo.py",
        "featurization_llamo.py",
    ):
        (tmp_path / name).write_text((tmp_path / name).read_text() + f"\nopen({str(marker)!r}, 'w').write({name!r})\n")
    capfd.readouterr()
    loaded_model, loaded_processor = load_model(LlamoModelConfig(stage=2, init_from=str(tmp_path)))
    assert not marker.exists()
    output = "".join(capfd.readouterr())
    assert "Do you wish to run the custom code" not in output  # a batch job must not stop at a prompt
    assert type(loaded_processor) is LlamoProcessor
    text = "<graph> What is it?"
    assert (
        loaded_processor(text=text, smiles=[MOLECULES["aspirin"]])["input_ids"]
        == processor(text=text, smiles=[MOLECULES["aspirin"]])["input_ids"]
    )
