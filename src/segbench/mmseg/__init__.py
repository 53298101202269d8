"""Everything that knows mmsegmentation's files: configs, checkpoints, importing users' models.

The rest of segbench reaches mmseg's configs and foreign checkpoints through
this package only.
"""
