"""data_prep: turn atlas trees, flat pair trees, volumes or the built-in phantom into PNG pairs
and a MONAI-style ``datalist.json`` (see :mod:`data_prep.datalist`). Knows file layouts, nothing
about models."""

from data_prep.datalist import SPLITS, DataPrepError, SlicePair, SplitSpec, load_datalist, write_dataset

__all__ = ["SPLITS", "DataPrepError", "SlicePair", "SplitSpec", "load_datalist", "write_dataset"]
