"""The train stage: `stage` (version, artifact, `run`), `trainer` (the loop), `monitor` (progress, TensorBoard, curves)."""
