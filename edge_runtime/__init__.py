"""rescue-t2i on the robot: caption → image with onnxruntime; no torch, no h5py.

The tokenizer (`edge_runtime.tokenizer`) and the bundle manifest (`edge_runtime.bundle`) are the
contract with training and export, and import only the standard library.
"""

__version__ = "0.1.0"
