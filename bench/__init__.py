"""The benchmark behind `scripts/benchmark.py`: the trainer against hand-written loops, and its side costs.

Layout (imports point one way: template/ at the bottom, bench/ above it, scripts/ on top; template
never imports bench):

    configs.py    what each timed run trains: model sizes, the trimmed configs
    loops/        the reference loops, one module each (raw, trainer, plain_accelerate, lightning_loop, nanogpt)
    harness.py    the step clock, fresh worker processes, paired comparisons
    stats.py      confidence intervals and the PASS / FAIL / UNDECIDED verdicts
    sections/     one module per section, and the registry (sections/__init__.py)
    report.py     the printed report, the targets, the flat ratios
    cli.py        the command line and the run
"""
