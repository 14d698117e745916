"""nitdbg.tui: the Textual app (thin app.py, screens/, widgets/, data in model.py)."""

import os

# Textual repaints on a timer (TEXTUAL_FPS, 60 by default): a key waits up to one period for
# its frame. 120 halves that wait; frames are only drawn when something changed, so an idle
# screen costs nothing more. Read by textual.constants at import, hence set here, first.
os.environ.setdefault("TEXTUAL_FPS", "120")
