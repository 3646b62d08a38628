"""What runs read.

Evaluation items, prompt sets, human-labelled benchmarks, verdict files, answer sets and config files (with the
debate panels they describe). Every reader checks its input before any model call and names the file and line of the
first problem.
"""
