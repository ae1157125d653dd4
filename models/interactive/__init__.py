"""Promptable (semi-automatic) segmentation: a 3D mask from clicks, a box or a few painted slices.

Every engine takes the same prompts (:mod:`models.interactive.prompts`) and follows the
:class:`models.interactive.engine.InteractiveEngine` protocol: ``prepare`` once per image, ``segment`` per
prompt set. Engines know nothing of HTTP, Celery or sessions.
"""
