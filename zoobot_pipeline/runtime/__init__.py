"""The model-package runtime: everything that scores needs, and never a training framework.

- :mod:`.package`: the package format (``model.json``, tasks, precision variants, input and output names) and
  :class:`~zoobot_pipeline.runtime.package.ModelPackage`, which verifies every ONNX file's sha256.
- :mod:`.devices`: the devices scoring can run on and their onnxruntime providers.
- :mod:`.session`: onnxruntime sessions per device, seeded per-galaxy MC-dropout masks, the per-galaxy seeds.
"""
