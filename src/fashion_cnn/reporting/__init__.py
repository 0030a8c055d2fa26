"""Reports: HTML pages and matplotlib figures of runs and experiments."""
