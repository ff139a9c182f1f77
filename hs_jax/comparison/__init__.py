"""Comparing methods: method x task x seed cells, each an ordinary run, resumed cell by cell
(`compare`), and the table with seed-aware intervals, paired tests and Holm's adjustment,
its pictures and the collapsed-system notes (`table`)."""
