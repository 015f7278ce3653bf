"""overdrive: train PyTorch models on one or many devices with your own loop."""
__version__ = "0.1.0"
