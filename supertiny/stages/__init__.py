"""The stages: each a function of artifacts, declared once in the registry (:mod:`.registry`).

A stage module holds its frozen Config (:mod:`supertiny.settings`: the only defaults and
checks of its settings) and its ``run(inputs, out, config, log, progress) -> Manifest``,
registered by name; heavy work (torch, onnx, llama.cpp) is imported inside ``run``, so the
CLI and the recipe checks read every Config without loading a model library.

* :mod:`.prune` — structured pruning (depth and width);
* :mod:`.transfer` — knowledge transfer: teacher data (``teach``), ``distill`` (SFT, logit KD), ``rl``;
* :mod:`.quantize` — quantization schemes (W4A16, W8A8, FP8) as plain checkpoints;
* :mod:`.export` — GGUF (llama.cpp) and ONNX (onnxruntime) exports, each checked against PyTorch;
* :mod:`.eval` and :mod:`.bench` — the measuring stages (task score, perplexity, agreement; speed
  against a target's budget);
* :mod:`.calibration` — the one calibration pass the compression stages share; :mod:`.runs` — the
  manifest run of a model source.

A new stage is a module here with a Config and a ``@stage(...)``-decorated ``run``, listed in
:data:`.registry.STAGE_MODULES`; it may import the ground floor (errors, settings, manifest,
readers, tasks, targets, models, evaluate) and the runtime, never :mod:`supertiny.flows` or the CLI.
"""
