"""The bottom layer: typed config, atomic I/O, privacy, offline env, anatomy sets and stage file layouts.

Every other package may import ``core``; ``core`` imports none of them.
"""
