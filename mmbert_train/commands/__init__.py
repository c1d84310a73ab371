"""The ``mmbert`` subcommands, one module each, every one a ``main(argv) -> int``.

Commands sit above the libraries (``mmbert_train.{model, checkpoints, data, evaluation, merge, train}``): they
parse flags, call the libraries and turn the libraries' errors into messages and exit codes. No library imports
this package.
"""
