"""Everything around the graphs and agents that makes no model call of its own.

In floors that import downwards only:

    cli/        the `fellowship` commands: thin, they validate options and call the runners
    meta_eval/  agreement with humans: scores, reports, charts
    outputs/    run store, JSONL, DPO/KTO export and card, traces
    inputs/     items, prompt sets, benchmarks, verdict files, answer sets, config files and panels
    rules/      parsing, verdict rules, metrics, secret masking (the ground agents may import)
    errors.py   the user-facing errors and exit statuses
    dev/        stub servers and the benchmark (development only)
"""
