"""Reliability drills (issue 12): one command each, printing what was tried and what was lost.

See ``bench/README.md`` ("Drills").  Each drill is a script run from the
repository root (``python bench/drills/<name>.py``); :mod:`.common` holds what
they share (starting the stack, reading the streams back, the tally).
"""
