"""Votes and judging: the preference store, blind pairs, and what they become (DPO pairs, KTO rows)."""
