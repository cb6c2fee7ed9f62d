"""Export stage: GGUF (llama.cpp) and ONNX (onnxruntime), each checked against PyTorch.

Exporters reuse :mod:`supertiny.archs` for architecture facts and
:mod:`supertiny.evaluate` for the parity report. Modules arrive with their issues.

The choices the exporters' configs take live here, free of numpy, gguf and onnx, so
the CLI offers them without importing the exporters.
"""

# GGUF (gguf.GGUFExportConfig): float types written, then llama.cpp quantization types
# that need no importance matrix (the IQ1/IQ2 ones do).
GGUF_DTYPES = ("f32", "f16", "bf16")
GGUF_QUANT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
                    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "IQ4_NL", "IQ4_XS")

# ONNX (onnx.OnnxExportConfig).
ONNX_QUANTS = ("none", "int8", "int8-dynamic", "int4", "carry")  # carry: a quantized checkpoint's own codes
ONNX_FORMATS = ("optimum", "genai")
ONNX_BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits accuracy levels: the type activations are computed in (0: the kernel
# picks, 1: float32, 2: float16, 3: bfloat16, 4: int8, blockwise).
ONNX_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
