"""Exports: a model written as a deployment artifact and checked against PyTorch before it is called done.

:mod:`.gguf` (llama.cpp; the writer :mod:`.gguf_writer`, the tokenizer as metadata :mod:`.gguf_vocab`,
the importance matrix :mod:`.imatrix`), :mod:`.onnx` (onnxruntime; the graph work :mod:`.onnx_graph`),
:mod:`.carry` (a quantized checkpoint's codes written as GGUF blocks and ONNX MatMulNBits) and
:mod:`.parity` (the check every export passes)."""
