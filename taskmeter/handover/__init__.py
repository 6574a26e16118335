"""The boundary between the proxy and its recorder process: the captured call,
the pipe that carries batches of them, and the spool and quarantine files."""
