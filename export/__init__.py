"""rescue-t2i export: checkpoint → verified (and optionally int8) ONNX bundle."""
