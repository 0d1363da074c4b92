"""The command line: argument parsing and the commands (``main``), and the mock API's own
command (``mockapi``). Only :mod:`asyncingest.__main__` and the ``asyncingest`` script import it;
it may import every other layer. Private: everything below the public API in
:mod:`asyncingest` may change.
"""
