"""Featurization throughput: what `LlamoProcessor` does per molecule against PyG's `from_smiles` and a bare parse.

    python benchmarks/bench_featurization.py [--data chebi20 pubchem] [--repeats 5] [--chunk_size 50]
        [--num_molecules N] [--clock wall|process] [--baseline_rev REV] [--profile]

LLaMo's per-molecule work is parse + OGB graph + functional-group motifs + the prompt SMILES
(`LlamoProcessor.featurize`, with its cache off so every molecule is computed); `torch_geometric.utils.from_smiles`
computes the graph only; `Chem.MolFromSmiles` is the floor of both. "RDKit calls alone" makes only the RDKit calls
LLaMo cannot do without -- the parse, the one bulk read of the molecule (`Mol.ToBinary`, which `read_molecule`
decodes) and the canonical prompt SMILES -- with nothing computed from them: the part of LLaMo's time that is RDKit's.
The SMILES are the validation splits of ChEBI-20 and PubChem324k in the team's shared data folder (the shipped
ChEBI-20 extract when that folder is absent). With `--baseline_rev`, the featurization module of that git revision
runs in the same interleaved loop (the "before" of an optimisation). `--clock process` times each chunk in CPU time
of this process instead of wall-clock time: on a machine shared with other jobs, waiting for a core is then not
counted (the ratios are otherwise measured the same way).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, Target, format_table, interleaved_timings, load_chebi20_smiles, median_ratio, print_header, print_targets


# Held-out SMILES in the shared data folder (next to the repository): tab-separated files with a SMILES column.
SHARED_DATA = ROOT.parent / "shared" / "data"
DATA_FILES = {
    "chebi20": SHARED_DATA / "chebi20" / "validation.txt",  # doubles every backslash of a SMILES
    "pubchem": SHARED_DATA / "pubchem324k_caption" / "validation.txt",
}


def load_smiles(sources: list[str], limit: int | None) -> tuple[list[str], str]:
    """The SMILES of `sources` (`DATA_FILES` names), at most `limit`, and a description of where they came from."""
    smiles, used = [], []
    for name in sources:
        path = DATA_FILES[name]
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as handle:
            rows = [row["SMILES"] for row in csv.DictReader(handle, delimiter="\t")]
        smiles += [text.replace("\\\\", "\\") for text in rows] if name == "chebi20" else rows
        used.append(f"{path} ({len(rows):,} rows)")
    if not smiles:  # e.g. a user's clone: the shipped ChEBI-20 extract
        return load_chebi20_smiles(limit or 2000)
    return smiles[:limit], " + ".join(used) + (f", first {limit:,}" if limit else "")


def load_featurization_at(revision: str):
    """`featurization_llamo` as it was at a git revision, imported under another name (None if git cannot show it)."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{revision}:featurization_llamo.py"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = pathlib_path = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)  # noqa: SIM115  (closed below)
    with path:
        path.write(source)
    name = f"featurization_llamo_{revision.replace('-', '_').replace('~', '_')}"
    spec = importlib.util.spec_from_file_location(name, pathlib_path.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def build_methods(baseline_module=None) -> dict:
    from rdkit import Chem
    from torch_geometric.utils import from_smiles

    from featurization_llamo import featurize_smiles
    from llamo.tiny import load_tiny_tokenizer
    from processing_llamo import LlamoProcessor

    processor = LlamoProcessor(tokenizer=load_tiny_tokenizer())

    def llamo(chunk):
        for smiles in chunk:
            processor.featurize(smiles)
        featurize_smiles.cache_clear()  # cold: every molecule computed (the benchmark's SMILES are all distinct anyway)

    no_props = Chem.PropertyPickleOptions.NoProps

    def rdkit_calls(chunk):  # the RDKit calls of `featurize_smiles`, nothing computed from them
        for smiles in chunk:
            mol = Chem.MolFromSmiles(smiles)
            mol.ToBinary(no_props)
            Chem.MolToSmiles(mol, isomericSmiles=False, canonical=True)

    methods = {
        "RDKit parse (MolFromSmiles)": lambda chunk: [Chem.MolFromSmiles(smiles) for smiles in chunk],
        "PyG from_smiles (graph only)": lambda chunk: [from_smiles(smiles) for smiles in chunk],
        "LLaMo processor (graph+motifs+prompt)": llamo,
        "RDKit calls alone (parse+pickle+SMILES)": rdkit_calls,
    }
    if baseline_module is not None:

        def baseline(chunk):
            for smiles in chunk:
                mol = baseline_module.parse_smiles(smiles)
                baseline_module.featurize_molecule(mol)
                baseline_module.prompt_smiles(mol)

        methods["LLaMo before (baseline rev)"] = baseline
    return methods


def profile(args) -> list[Target]:
    """Call-tree profiles (pyinstrument, `pip install pyinstrument`) of the LLaMo path, and of the baseline revision."""
    from pyinstrument import Profiler
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    smiles, source = load_smiles(args.data, args.num_molecules)
    methods = build_methods(load_featurization_at(args.baseline_rev) if args.baseline_rev else None)
    for name in [name for name in methods if name.startswith("LLaMo")]:
        profiler = Profiler(interval=0.0005)
        with profiler:
            for _ in range(args.repeats):
                methods[name](smiles)
        print(f"\n## pyinstrument: {name}, {args.repeats} x {len(smiles)} SMILES of {source}\n")
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    return []


def main(argv: list[str] | None = None) -> list[Target]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk_size", type=int, default=50)
    parser.add_argument("--data", nargs="+", choices=sorted(DATA_FILES), default=["chebi20", "pubchem"])
    parser.add_argument("--num_molecules", type=int, default=None, help="at most this many SMILES (default: all)")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall", help="wall-clock or CPU time")
    parser.add_argument("--baseline_rev", default=None, help="git revision whose featurization_llamo.py runs alongside")
    parser.add_argument(
        "--profile", action="store_true", help="instead: pyinstrument profile of the LLaMo path (and the baseline)"
    )
    args = parser.parse_args(argv)
    if args.profile:
        return profile(args)

    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")  # from_smiles would print RDKit's warnings; parse_smiles blocks them itself
    smiles, source = load_smiles(args.data, args.num_molecules)
    valid = [text for text in smiles if Chem.MolFromSmiles(text) is not None and text.strip()]
    baseline = load_featurization_at(args.baseline_rev) if args.baseline_rev else None

    print_header(
        "Featurization: molecules per second, one process",
        "python benchmarks/bench_featurization.py " + " ".join(argv or sys.argv[1:]),
    )
    print(f"data: {source}; {len(valid)} of {len(smiles)} SMILES parse and are used")
    print(f"{args.repeats} repeats, methods interleaved every {args.chunk_size} molecules; medians over repeats; "
          f"{'wall-clock' if args.clock == 'wall' else 'CPU'} time\n")  # fmt: skip
    if args.baseline_rev and baseline is None:
        print(f"(baseline revision {args.baseline_rev!r} not available from git: skipped)\n")

    methods = build_methods(baseline)
    methods[next(iter(methods))](valid[:10])  # warm-up of lazy imports
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    timings = interleaved_timings(methods, valid, args.chunk_size, args.repeats, clock=clock)

    pyg = timings["PyG from_smiles (graph only)"]
    rows = []
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        rows.append(
            [name, f"{len(valid) / median:,.0f}", f"{median / len(valid) * 1e6:.0f}", f"{median_ratio(pyg, seconds):.2f}x"]
        )
    print(format_table(["method", "molecules/s", "us/molecule", "rate vs from_smiles"], rows))
    print()

    llamo = timings["LLaMo processor (graph+motifs+prompt)"]
    parse = timings["RDKit parse (MolFromSmiles)"]
    floor = timings["RDKit calls alone (parse+pickle+SMILES)"]
    targets = [
        Target("LLaMo rate / from_smiles rate (required)", median_ratio(pyg, llamo), 1.0, at_least=True),
        Target("LLaMo rate / from_smiles rate (aim)", median_ratio(pyg, llamo), 1.5, at_least=True),
        Target("LLaMo time / bare parse time (aim)", median_ratio(llamo, parse), 4.0),
        Target("RDKit calls alone: time / bare parse time", median_ratio(floor, parse), None),
        Target("RDKit calls alone: rate / from_smiles rate (LLaMo's ceiling)", median_ratio(pyg, floor), None),
        Target("RDKit calls alone: share of LLaMo's time", median_ratio(floor, llamo), None, unit=""),
    ]
    if baseline is not None:
        before = timings["LLaMo before (baseline rev)"]
        print(f"speed-up over {args.baseline_rev}: {median_ratio(before, llamo):.2f}x\n")
    print_targets(targets)
    return targets


if __name__ == "__main__":
    main()
