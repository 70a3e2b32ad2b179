"""transfer: image classification by transfer learning on TensorFlow/Keras.

Every command of the CLI is a function of a module here, callable from Python:
``transfer.datasets.fetch_data``, ``transfer.training.train``, ``transfer.mnist.run`` ...
Importing this package does not import TensorFlow.
"""

__version__ = "0.1.0"
