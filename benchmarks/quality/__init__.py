"""Quality benchmark of LLaMo on real data (ChEBI-20, PubChem IUPAC names, QM9): splits, runs and report.

Entry point: `benchmarks/run_benchmark.py`. Nothing here is imported by the model code or the unit tests' fixtures.
"""
