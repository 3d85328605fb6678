"""One package per runtime: everything edgectl knows how to do with one runtime lives in it.

Each package has the same small layout, so a newcomer finds the room in one step:

- `convert.py`: the converter, registered into `toolchain.converters.CONVERTERS`;
- `quantize.py`: its post-training quantizer, where the runtime has one of its own;
- `runner.py`: how the host runs its artifact, where that is more than a `runners.py` class;
- `checks.py` and the rest: the runtime's own checks (Core ML's op and precision checks,
  TFLite Micro's arena, op and flash fit).

The facts other code reads about a runtime (artifact format, suffixes, whether the host can
run it, its extra, its baseline runner) are one row in `targets.runtimes.RUNTIMES`; a profile's
typed `options` model is in `targets.options`. Adding a runtime is a new package here and one
row there. Importing this package imports no runtime library.
"""
