"""faceaudit: audit real and synthetic face-recognition datasets.

The core library: dataset readers, the attribute list and, in later modules, the MAC model, the
inference engine and the statistics. Nothing in this package imports FiftyOne; the FiftyOne side
lives in the ``fiftyone_plugin`` package.
"""

__version__ = "0.1.0"
