"""What a run keeps on disk: the workdir (one writer per workdir through its lock, atomic
writes, identity comparison with one `identity_diff`, runs moved aside, the kill-point test
hook: `workdir`) and the search's orbax checkpoints (identity checked first, CRC32 per array,
damaged steps moved aside, read-only access for live inspection: `checkpointing`)."""
