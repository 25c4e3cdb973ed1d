"""Safe output files: the one place where the engine writes a file a user names or reads later.

Its own top-level package because graphs/, transcoders/ and circuits/ all write files and the design
forbids graphs and transcoders to import each other or circuits (graphs <- circuits -> transcoders):
a fourth package that imports none of them (only the standard library) is the one home all three
may import without breaking that one-way rule.

Rules (issue 13, "never touch what is not yours"):
- a regular file (or a new one) is replaced atomically: temporary file beside it, fsync, rename;
  through a symlink, the link's target is replaced and the link stays a link;
- a special file (/dev/stdout, a pipe, a device node) is written through, never replaced;
- a folder, a missing parent folder, a parent that is a file, an unwritable place: one-line
  OutputError, raised by check_output before any work is done;
- temporary files left beside an output by a killed run are removed on the next write.
"""

from safeio.errors import OutputError
from safeio.paths import check_output, check_output_dir
from safeio.write import open_output, remove_stale_temps, write_bytes, write_text

__all__ = ["OutputError", "check_output", "check_output_dir", "open_output",
           "remove_stale_temps", "write_bytes", "write_text"]
