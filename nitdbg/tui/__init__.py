"""nitdbg.tui: the Textual app (thin app.py, screens/, widgets/, data in model.py)."""
