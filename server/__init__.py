"""The estimation service. Runs exported bundles with numpy and ONNX Runtime: no torch."""
