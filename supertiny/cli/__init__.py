"""The ``supertiny`` command: a thin click layer that parses, calls the library, prints.

One module per command (group): :mod:`.augment`, :mod:`.inspect`, :mod:`.eval`, :mod:`.prune`, :mod:`.export`
(gguf, onnx), :mod:`.quantize`, :mod:`.teach`, :mod:`.distill`, :mod:`.rl`, :mod:`.trim`, :mod:`.bench`,
:mod:`.serve`, :mod:`.targets`, :mod:`.verify`, :mod:`.run` and :mod:`.search`; importing them
registers them on :func:`main`. A stage's command is derived from its declaration
(:mod:`.options`: its inputs, its Config's settings). User mistakes
(:class:`supertiny.errors.UserError`) become one line on stderr and exit code 2; nothing a
user can cause ends in a traceback.
"""

from supertiny.cli import (  # noqa: F401  (registers the commands)
    augment,
    bench,
    distill,
    eval,
    export,
    inspect,
    prune,
    quantize,
    rl,
    run,
    search,
    serve,
    targets,
    teach,
    trim,
    verify,
)
from supertiny.cli.core import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
