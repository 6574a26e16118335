"""taskmeter: meter every AI API call against the developer's current task."""

__version__ = "0.1.0"
