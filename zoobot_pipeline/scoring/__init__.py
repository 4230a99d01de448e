"""Survey scoring: onnxruntime sessions, the batch pipeline (in-process and Ray Data) and the catalogue writer."""
