"""The ``supertiny`` command: a thin click layer that parses, calls the library, prints.

User mistakes (:class:`supertiny.errors.UserError`) become one line on stderr and
exit code 2; nothing a user can cause ends in a traceback. The commands live in
:mod:`.model` (inspect, eval, prune, export), :mod:`.artifact` (verify) and
:mod:`.runtime` (targets, bench, serve), :mod:`.train` (teach), :mod:`.distill` (distill),
:mod:`.rl` (rl), :mod:`.quantize` (quantize), :mod:`.recipe` (run) and :mod:`.search` (search);
importing them registers them on :func:`main`.
"""

from . import artifact, distill, model, quantize, recipe, rl, runtime, search, train  # noqa: F401  (registers the commands)
from .core import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
