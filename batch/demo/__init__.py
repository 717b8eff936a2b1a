"""The embedded demo: a sample corpus and tiny locally built models (random weights)."""
