"""Gradio tabs. Each module has `build()`, which lays out widgets and wires them to core/ and training/."""
