"""LLaMo's supporting library: everything around the remote-code model files.

The model itself lives in the top-level modules that are copied next to the weights (`configuration_llamo`,
`modeling_llamo`, `processing_llamo`, `featurization_llamo`). This package holds the tools built on them, one job
per module (see docs/architecture.md):

| module | job |
|---|---|
| `llamo.data` | data formats (`FORMATS`) -> conversations, featurization + tokenization for training, skip counts |
| `llamo.collator` | `LlamoDataCollator` (encoded rows -> padded batch with joined molecules); `LlamoChatCollator`: stock TRL `SFTTrainer` on raw chat rows with molecules |
| `llamo.instructions` | RDKit-computed question/answer pairs about molecules |
| `llamo.examples` | evaluation examples (`Example`, `question_kind`, loading), shared by evaluation and baselines |
| `llamo.metrics` | metric families: text, names, numbers, molecules, exact match (`METRIC_FAMILIES`) |
| `llamo.baselines` | answers without a language model (retrieval, most common / mean) |
| `llamo.sft` | the two-stage training recipe on TRL's `SFTTrainer` (`train_sft.py`, `llamo-train`) |
| `llamo.evaluation` | the evaluation runner (`llamo-eval`) |
| `llamo.attention` | the projector's attention mapped onto atoms, pictures (`llamo-attention`) |
| `llamo.tiny` | a tiny LLaMo for CPUs and its shipped tokenizer (`llamo-tiny`) |
| `llamo.base_llm` | stage 0 of the tiny pipelines: a tiny Llama learns the conversations as text |
| `llamo.convert` | converter from the original checkpoint (`llamo-convert`) |
| `llamo.demo` | the Gradio demo (`llamo-demo`, or `python app.py`) |
| `llamo.quiet` | quiet by default: filters for third-party messages that never apply to a LLaMo run, progress bars |

Importing the package installs `llamo.quiet`'s filters (three exact third-party messages; see there), before the
libraries that print them are imported by the tools.
"""

from llamo.quiet import install_filters


install_filters()
