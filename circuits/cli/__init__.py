"""The `circuits` command line: a thin layer over the library's public functions."""
