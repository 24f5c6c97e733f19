"""Project configuration that is not a bundle (``atlas_series.yaml``), installed as package data.

A Python package only so that :func:`pipeline.resources.atlas_series_config` finds it with
``importlib.resources``, from a checkout and from an installed wheel alike; it holds no code.
"""
