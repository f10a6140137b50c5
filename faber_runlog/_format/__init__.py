"""The on-disk format: run keys and file names, snapshots, events.jsonl lines, shipped schemas, FABER's folder facts."""
