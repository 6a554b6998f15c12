"""Training data: loading rows from bundled sets, files and the Hub, their formats, and what the model sees."""
