"""The quality benchmark's report: per-model metrics aggregated over seeds, Markdown tables and PNG plots.

    python benchmarks/quality/report.py --input outputs/benchmark [--readme docs/results.md]

reads what `benchmarks/run_benchmark.py` wrote (`run.json`, `eval/<model>/<task>/results.json`, the models'
`training_summary.json`) and writes `report/results.json`, `report/results.md`, `report/metrics.png` and
`report/loss_curves.png`. With `--readme PAGE` (the results page, `docs/results.md`), the block between the page's
`benchmark-results` markers is replaced by the Markdown, and the plots are copied to the repository's `docs/images/`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil
import statistics
from collections import defaultdict


BASELINES = {"morgan_nn": "Morgan-fingerprint nearest neighbour", "train_mean": "training mean / most common answer"}
VARIANT_NAMES = {
    "none": "no graph (`none`, SMILES text only)",
    "mlp_high": "MLP on the last GIN layer (`mlp_high`)",
    "multilevel_no_motif": "multi-level, no motifs (`multilevel_no_motif`)",
    "multilevel": "multi-level + motifs (`multilevel`, LLaMo)",
}
TASK_TITLES = {
    "caption": "ChEBI-20 molecule captioning (dev split of ChEBI-20 validation)",
    "iupac": "PubChem IUPAC names (validation)",
    "property": "QM9 HOMO / LUMO / gap in Hartree (hash-split dev molecules)",
}
# (key, column title, scale for display, decimals)
TEXT_COLUMNS = [
    ("bleu4_word", "BLEU-4", 1, 1), ("meteor_word", "METEOR", 1, 1), ("rougeL", "ROUGE-L", 1, 1),
    ("bleu4_llm", "BLEU-4 (LLM tok.)", 1, 1), ("meteor_llm", "METEOR (LLM tok.)", 1, 1),
]  # fmt: skip
COLUMNS = {
    "caption": [("bleu2_word", "BLEU-2", 1, 1), *TEXT_COLUMNS],
    "iupac": [("exact_match", "exact match %", 100, 1), ("bleu2_word", "BLEU-2", 1, 1), *TEXT_COLUMNS],
    "property": [
        ("mae", "MAE (parsed answers)", 1, 4), ("unparsable_share", "unparsable %", 100, 1),
        ("distinct_answers", "distinct answers %", 100, 1),
        ("mae_homo", "MAE HOMO", 1, 4), ("mae_lumo", "MAE LUMO", 1, 4), ("mae_gap", "MAE gap", 1, 4),
    ],
}  # fmt: skip
PLOTTED = [("caption", "bleu4_word"), ("caption", "meteor_word"), ("iupac", "exact_match"), ("iupac", "meteor_word"),
           ("property", "mae"), ("property", "distinct_answers")]  # fmt: skip
MARKERS = ("<!-- benchmark-results:start -->", "<!-- benchmark-results:end -->")
SEED = re.compile(r"^(?P<variant>.+)-seed(?P<seed>\d+)$")


def flat_metrics(task_results: dict) -> dict[str, float | None]:
    """A task's metrics, with per-property MAE flattened to `mae_<property>`."""
    flat = {key: value for key, value in task_results.items() if isinstance(value, (int, float)) or value is None}
    for prop, values in task_results.get("by_property", {}).items():
        flat[f"mae_{prop}"] = values["mae"]
        flat[f"unparsable_{prop}"] = values["unparsable"]
    return flat


def distinct_share(predictions: pathlib.Path) -> float:
    """Share of different answers: near 0 when a model says the same thing to every question (e.g. a mean value)."""
    answers = [json.loads(line)["prediction"] for line in predictions.read_text().splitlines()]
    return len(set(answers)) / len(answers)


def group_of(name: str) -> tuple[str, int | None]:
    match = SEED.match(name)
    return (match["variant"], int(match["seed"])) if match else (name, None)


def summarize(values: list[float | None]) -> dict:
    """Mean, sample standard deviation, min, max of the runs that have a value; how many have none."""
    present = [value for value in values if value is not None]
    summary = {"runs": len(values), "missing": len(values) - len(present), "values": values}
    if present:
        summary.update(mean=statistics.fmean(present), min=min(present), max=max(present))
        summary["sd"] = statistics.stdev(present) if len(present) > 1 else None
    return summary


def build_report(benchmark_dir: pathlib.Path) -> dict:
    """Every model's metrics per task, grouped over seeds, with the run's budget and timings."""
    run = json.loads((benchmark_dir / "run.json").read_text())
    per_model = defaultdict(dict)
    for path in sorted((benchmark_dir / "eval").glob("*/*/results.json")):
        results = json.loads(path.read_text())
        task = path.parent.name
        if (path.parent / "predictions.jsonl").is_file():
            results["tasks"][task]["distinct_answers"] = distinct_share(path.parent / "predictions.jsonl")
        per_model[path.parent.parent.name][task] = results
    groups = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for name, tasks in per_model.items():
        group, _ = group_of(name)
        for task, results in tasks.items():
            for key, value in flat_metrics(results["tasks"][task]).items():
                groups[group][task][key].append(value)
    aggregated = {
        group: {task: {key: summarize(values) for key, values in metrics.items()} for task, metrics in tasks.items()}
        for group, tasks in groups.items()
    }
    per_run = {name: {task: results["tasks"][task] for task, results in tasks.items()} for name, tasks in per_model.items()}
    return {"run": run, "models": aggregated, "per_run": per_run}


def format_cell(summary: dict | None, scale: float, digits: int) -> str:
    """`mean ± sd` over runs; runs without a value (e.g. no parsable answer at all) are said, not hidden."""
    if summary is None:
        return "–"
    if "mean" not in summary:
        return f"n/a in {summary['missing']} of {summary['runs']} runs"
    cell = f"{summary['mean'] * scale:.{digits}f}"
    if summary.get("sd") is not None:
        cell += f" ± {summary['sd'] * scale:.{digits}f}"
    if summary["missing"]:
        cell += f" (n/a in {summary['missing']} of {summary['runs']} runs)"
    return cell


def group_color(group: str) -> str:
    """Fixed colours, the same in every plot: greys for baselines, one colour per projector."""
    if group in BASELINES:
        return ("0.45", "0.75")[list(BASELINES).index(group)]
    return f"C{list(VARIANT_NAMES).index(group)}" if group in VARIANT_NAMES else "C7"


def ordered_groups(models: dict) -> list[str]:
    return [g for g in (*BASELINES, *VARIANT_NAMES) if g in models] + sorted(set(models) - set(BASELINES) - set(VARIANT_NAMES))


def display_name(group: str) -> str:
    if group in BASELINES:
        return f"baseline: {BASELINES[group]}"
    return f"tiny LLaMo, {VARIANT_NAMES.get(group, group)}"


def task_table(report: dict, task: str) -> list[str]:
    columns = COLUMNS[task]
    lines = ["| model | runs | " + " | ".join(title for _, title, _, _ in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for group in ordered_groups(report["models"]):
        metrics = report["models"][group].get(task)
        if metrics is None:
            continue
        runs = next(iter(metrics.values()))["runs"]
        cells = [format_cell(metrics.get(key), scale, digits) for key, _, scale, digits in columns]
        lines.append(f"| {display_name(group)} | {runs} | " + " | ".join(cells) + " |")
    return lines


def stage_totals(training: dict) -> dict[str, dict]:
    """Per stage: the number of runs, the steps they took and their mean wall time (from training_summary.json)."""
    stages = defaultdict(lambda: {"steps": set(), "seconds": []})
    for runs in training.values():
        for stage, summary in runs.items():
            stages[stage]["steps"].add(summary["steps"])
            stages[stage]["seconds"].append(summary["seconds"])
    return dict(sorted(stages.items()))


def budget_lines(run: dict) -> list[str]:
    settings, seconds, splits, dev = run["settings"], run["seconds"], run["splits"], run["dev_questions"]
    weights, new_tokens = run["mixture_weights"], run["max_new_tokens"]
    stages = "; ".join(
        f"{stage}: {len(totals['seconds'])} runs of {'/'.join(map(str, sorted(totals['steps'])))} steps, "
        f"{statistics.fmean(totals['seconds']):.0f} s each"
        for stage, totals in stage_totals(run["training"]).items()
    )
    return [
        f"Command: `{run['command']}` — finished {run['finished']} on {run['machine']}.",
        "",
        "- **Scale**: tiny Llama (hidden 64, 2 layers, 2,048-token BPE), tiny GIN (5 layers, width 32). One base LLM, "
        f"pretrained {settings['stage0_steps']} steps (batch 16) on the training conversations as text, is shared by all runs.",
        f"- **Budget per run**: stage 1 (graph projectors only; captions) {settings['stage1_steps']} steps; stage 2 "
        f"(multi-task: captions {weights['caption']}, names {weights['iupac']}, properties {weights['property']}) "
        f"{settings['stage2_steps']} steps; batch {settings['batch_size']}, max length {settings['max_length']}, "
        f"lr {settings['stage1_lr']} / {settings['stage2_lr']} (cosine), LoRA r 16 on every linear layer; "
        f"seeds {settings['seeds']}.",
        f"- **Measured wall time**: {seconds['total']:.0f} s in all: stage 0 {seconds['stage0']:.0f} s; training "
        f"{seconds['training']:.0f} s ({stages}); evaluation {seconds['evaluation']:.0f} s; "
        f"baselines {seconds['baselines']:.0f} s. The 2-core CPU was shared with other jobs: times are noisy, step "
        "counts are not.",
        f"- **Splits**: ChEBI-20 validation, split by a hash of the canonical SMILES: {splits['caption']['train']} train / "
        f"{splits['caption']['dev']} dev molecules. PubChem IUPAC: train {splits['iupac']['train']}, validation "
        f"{splits['iupac']['dev']}. QM9: hash buckets of {splits['property']['train']} train / {splits['property']['dev']} "
        f"dev molecules. Scored: the first {dev['caption']} / {dev['iupac']} / {dev['property']} dev questions "
        f"(QM9: three per molecule), greedy, at most {new_tokens['caption']} / {new_tokens['iupac']} / "
        f"{new_tokens['property']} new tokens.",
        "- The baselines answer from the **whole** train splits; each model saw "
        f"{settings['stage2_steps'] * settings['batch_size']} stage-2 questions.",
        "- BLEU, METEOR, ROUGE ×100 on word tokens (*LLM tok.*: the tiny models' BPE pieces, used for the baselines too); "
        "MAE in Hartree over the answers that hold a number, the rest counted as *unparsable*. "
        "Mean ± sample standard deviation over seeds.",
    ]


def markdown(report: dict) -> str:
    lines = budget_lines(report["run"])
    for task, title in TASK_TITLES.items():
        if any(task in tasks for tasks in report["models"].values()):
            lines += ["", f"**{title}**", "", *task_table(report, task)]
    return "\n".join(lines) + "\n"


def plot_metrics(report: dict, path: pathlib.Path) -> None:
    """One panel per headline metric: a bar per model (mean), the seeds as dots, the sample SD as error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ordered_groups(report["models"])
    figure, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    for axis, (task, key) in zip(axes.flat, PLOTTED):
        title, scale = next((t, s) for k, t, s, _ in COLUMNS[task] if k == key)
        for position, group in enumerate(groups):
            summary = report["models"][group].get(task, {}).get(key)
            if summary is None or "mean" not in summary:
                continue
            error = (summary.get("sd") or 0) * scale
            axis.bar(position, summary["mean"] * scale, color=group_color(group), yerr=error, capsize=4)
            seeds = [value * scale for value in summary["values"] if value is not None]
            if len(seeds) > 1:
                axis.plot([position] * len(seeds), seeds, "k.", markersize=5)
        retrieval = report["models"].get("morgan_nn", {}).get(task, {}).get(key)
        if retrieval is not None and "mean" in retrieval:  # the bar to beat, across the panel
            axis.axhline(retrieval["mean"] * scale, color="0.45", linestyle="--", linewidth=1)
        axis.set_title(f"{task}: {title}")
        axis.set_xticks(range(len(groups)), [group.replace("_", "\n", 1) for group in groups], fontsize=8)
    figure.suptitle(
        "Dev-set metrics: baselines (grey; dashed line = retrieval) and tiny LLaMo projectors "
        "(mean ± SD over seeds, dots = seeds)"
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def loss_histories(benchmark_dir: pathlib.Path, run: dict) -> dict[str, dict[str, list[tuple[list, list]]]]:
    """stage -> projector -> one (steps, losses) curve per seed, from the Trainer's log history."""
    curves = defaultdict(lambda: defaultdict(list))
    for name, stages in run["training"].items():
        group, _ = group_of(name)
        for stage in stages:
            folder = benchmark_dir / "models" / (name if stage == "stage2" else f"{name}-{stage}")
            history = json.loads((folder / "training_summary.json").read_text())["log_history"]
            points = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]
            curves[stage][group].append(([step for step, _ in points], [loss for _, loss in points]))
    return curves


def plot_losses(benchmark_dir: pathlib.Path, report: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = loss_histories(benchmark_dir, report["run"])
    stages = sorted(curves)
    figure, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4), constrained_layout=True, squeeze=False)
    for axis, stage in zip(axes[0], stages):
        for group in ordered_groups(curves[stage]):
            for seed_index, (steps, losses) in enumerate(curves[stage][group]):
                axis.plot(steps, losses, color=group_color(group), alpha=0.8, label=group if seed_index == 0 else None)
        axis.set_title(f"{stage}: training loss (one line per seed)")
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(report: dict, folder: pathlib.Path, benchmark_dir: pathlib.Path | None = None) -> str:
    """results.json, results.md, metrics.png, loss_curves.png into `folder`; returns the Markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    benchmark_dir = benchmark_dir or folder.parent
    text = markdown(report)
    (folder / "results.json").write_text(json.dumps(report, indent=2))
    (folder / "results.md").write_text(text)
    plot_metrics(report, folder / "metrics.png")
    plot_losses(benchmark_dir, report, folder / "loss_curves.png")
    return text


def update_readme(readme: pathlib.Path, text: str, report_dir: pathlib.Path) -> None:
    """Replace the block between the markers of `readme` (a Markdown page: `docs/results.md`, or a README at the
    repository root) with `text` and the plots, copied to `docs/images/` and linked relative to the page."""
    content = readme.read_text()
    start, end = MARKERS
    if start not in content or end not in content:
        raise ValueError(f"{readme}: add the lines {start} and {end} where the generated results go")
    link = "images" if readme.parent.name == "docs" else "docs/images"  # a page in docs/ or at the root
    images = readme.parent / link
    images.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.png", "loss_curves.png"):
        shutil.copyfile(report_dir / name, images / f"benchmark_{name}")
    pictures = (
        f"\n![Dev-set metrics per model, baselines in grey]({link}/benchmark_metrics.png)\n"
        f"\n![Training loss of stages 1 and 2 per projector and seed]({link}/benchmark_loss_curves.png)\n"
    )
    before, rest = content.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{text}{pictures}{end}{after}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=pathlib.Path, default=pathlib.Path("outputs/benchmark"))
    parser.add_argument("--readme", type=pathlib.Path, default=None, help="the page holding the block: docs/results.md")
    args = parser.parse_args(argv)
    text = write_report(build_report(args.input), args.input / "report", args.input)
    print(text)
    if args.readme is not None:
        update_readme(args.readme, text, args.input / "report")


if __name__ == "__main__":
    main()
