"""The `trtserve` command: serve, inspect and manage runtimes, infer, upload, benchmark."""
