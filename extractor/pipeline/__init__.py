"""The pipeline: the composition root, planning, the fetch engine, the writer, and the commands."""
