"""A tenant app whose module fails at import, as a bad deploy would."""

raise RuntimeError("this app is broken on purpose: its import fails")
