"""nitdbg.tui: the Textual app (thin app.py, screens/, widgets/, data in model.py)."""

import os

# Textual repaints on a timer (TEXTUAL_FPS, 60 by default): a frame asked for less than one
# period after the previous one ended waits for the timer, and Textual's timer skips a tick
# after a late one, so up to two periods: 33 ms at 60, 8 ms at 240 (a step asked for right
# after the last one's frame waited so). Frames are only drawn when something changed (the
# running guest's progress paints some 25 a second), so an idle screen costs nothing more.
# Read by textual.constants at import, hence set here, first.
os.environ.setdefault("TEXTUAL_FPS", "240")
