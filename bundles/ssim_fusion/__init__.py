"""The ssim_fusion MONAI bundle: ``configs/``, ``models/``, ``docs/README.md`` (the model card), ``LICENSE``.

A Python package only so that the wheel installs it and :func:`pipeline.resources.bundle_root` finds
it with ``importlib.resources``; it holds no code.
"""
