"""The ground floor.

Deterministic rules every other layer may use. Parsing the judges' replies, the verdict rules (ties, orders,
juries), agreement metrics, and masking secrets. No I/O, no model calls.
"""
