"""Screens of the nitdbg app."""
