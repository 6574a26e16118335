"""The recorder process: it turns captured calls into rows (parsing, usage,
estimates, prices) and stores them. `python -m taskmeter.recorder DB`."""
