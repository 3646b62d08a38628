"""Meta-evaluation: how far evaluators agree with humans (scores) and the reports and charts that show it."""
