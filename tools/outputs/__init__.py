"""What runs write.

JSON Lines written safely, the run store (progress in SQLite), the DPO/KTO export and its dataset card, and local
traces.
"""
