"""Widgets of the nitdbg app, one module per pane."""
