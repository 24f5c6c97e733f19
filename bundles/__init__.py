"""MONAI bundles of ssim-fusion, installed as package data of the wheel (see :mod:`pipeline.resources`)."""
