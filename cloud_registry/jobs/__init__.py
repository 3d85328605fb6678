"""Retraining jobs: what the registry hands a worker (`spec`), what runs there (`worker`, `entry`), how it is
run (`runners`: local processes or Ray) and the registry's side of it (`manager`).

The worker never imports the toolchain: it runs the model owner's training entry point and
`edgectl build` / `edgectl retrain evaluate` as child processes.
"""
