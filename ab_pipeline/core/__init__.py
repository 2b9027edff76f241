"""The contract and shared basics: the experiment config and metric catalog, errors, paths, dates,
number formatting, the user-SQL check and the deterministic assignment function."""
