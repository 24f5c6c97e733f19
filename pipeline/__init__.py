"""pipeline: the importable library of the fusion toolkit (transforms, network, SSIM-alpha loss,
handlers, metrics, baselines, io). Images are float in [0, 1] inside the library; metrics take
0..255 like the reference toolboxes."""

__version__ = "0.1.0"
