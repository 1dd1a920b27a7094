"""Command-line tools of the runtime: ``lechpe-export``, ``lechpe-infer``, ``lechpe-bench``.

Each module has ``main(argv=None) -> int`` (the console-script entry point).
"""
