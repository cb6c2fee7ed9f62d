"""Data readers (line-numbered errors), the one token split, and the shared calibration pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supertiny import evaluate as ev
from supertiny.archs import ARCHITECTURES
from supertiny.errors import InvalidInputError
from supertiny.readers import calibration_text, read_jsonl, read_text, spans, token_windows
from supertiny.stages.calibration import LMLoss, calibrate
from supertiny.stages.export.imatrix import ImatrixStatistic, collect_imatrix
from supertiny.stages.prune.importance import ImportanceStatistic, collect

from conftest import build_tiny_model


def test_read_text_moved_but_still_importable_from_evaluate():
    assert ev.read_text is read_text


@pytest.mark.parametrize("content,pattern", [
    ("", r"f.jsonl holds no records"),
    ("\n  \n", r"f.jsonl holds no records"),
    ('{"a": 1}\n{"a": 2,}\n', r"f.jsonl:2: not valid JSON \(.*column 9\)"),
    ('\n[1, 2]\n', r"f.jsonl:2: expected a JSON object, got a list"),
    ('"text"\n', r"f.jsonl:1: expected a JSON object, got a string"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, pattern):
    f = tmp_path / "f.jsonl"
    f.write_text(content)
    with pytest.raises(InvalidInputError, match=pattern):
        read_jsonl(f)


def test_jsonl_records_and_their_fields(tmp_path):
    f = tmp_path / "f.jsonl"
    f.write_bytes(b'{"q": "a", "n": 3, "ok": true}\n\n{"q": 5, "n": true}\n{"x": "\xff"}\n')
    with pytest.raises(InvalidInputError, match=r"f.jsonl:4: not UTF-8"):
        read_jsonl(f)
    f.write_text('{"q": "a", "n": 3, "ok": true}\n\n{"q": 5, "n": true}\n')
    first, second = read_jsonl(f)
    assert (first.line, second.line) == (1, 3) and first.data == {"q": "a", "n": 3, "ok": True}
    assert first.field("q") == "a" and first.field("n", int) == 3 and first.field("ok", bool) is True
    assert first.field("missing", required=False) is None
    assert first.field("n", float) == 3
    with pytest.raises(InvalidInputError, match=r'f.jsonl:1: missing field "answer"'):
        first.field("answer")
    with pytest.raises(InvalidInputError, match=r'f.jsonl:3: field "q" must be a string, got an integer'):
        second.field("q")
    with pytest.raises(InvalidInputError, match=r'f.jsonl:3: field "n" must be an integer, got a boolean'):
        second.field("n", int)
    with pytest.raises(InvalidInputError, match="no such JSON Lines file"):
        read_jsonl(tmp_path / "none.jsonl")


def test_calibration_records(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "alpha"}\n{"prompt": "q?", "completion": ""}\n')
    assert calibration_text(str(f)) == "alpha\n\nq?\n"  # as before: an empty part still joins
    f.write_text('{"text": "alpha"}\n{"text": 7}\n')
    with pytest.raises(InvalidInputError, match=r'c.jsonl:2: field "text" must be a string, got an integer'):
        calibration_text(str(f))
    f.write_text('{"text": "alpha"}\n{"text": "b"\n')
    with pytest.raises(InvalidInputError, match=r"c.jsonl:2: not valid JSON"):
        calibration_text(str(f))
    with pytest.raises(InvalidInputError, match="does not exist"):
        calibration_text(str(tmp_path / "none.jsonl"))
    assert calibration_text(None) == read_text(ev.default_corpus_path())


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 100, 511, 512, 513, 1300])
@pytest.mark.parametrize("window", [16, 64, 512])
def test_token_split_selects_what_each_stage_selected(n, window):
    ids = list(range(1000, 1000 + n))
    # pruning: calibration then held-out tokens, calibration windows of >= 16 tokens
    calib, held_out = spans(ids, 300, 200)
    assert (calib, held_out) == (ids[:300], ids[300:500])
    old_prune = [calib[i:i + window] for i in range(0, len(calib), window) if len(calib[i:i + window]) >= 16]
    assert token_windows(calib, window) == old_prune
    # GGUF export: imatrix tokens after the ones the parity check scores, windows of >= 2 tokens
    _, imatrix = spans(ids, 128, 256)
    assert imatrix == ids[128:128 + 256]
    old_imatrix = [imatrix[b:b + window] for b in range(0, len(imatrix), window) if len(imatrix[b:b + window]) > 1]
    assert token_windows(imatrix, window, min_len=2) == old_imatrix
    with pytest.raises(InvalidInputError, match="window"):
        token_windows(ids, 0)


# -- the shared calibration pass equals the computations it replaced --------------------
# The references below are the pre-refactor collectors, written against literal llama
# module paths and nn.Linear discovery, independently of supertiny's rows and pass.

def _old_importance(model, windows, layer_loss):
    cfg = model.config
    layers = model.model.layers
    n_layers, n_heads = len(layers), cfg.num_attention_heads
    head_dim = cfg.hidden_size // n_heads
    bi = torch.zeros(n_layers, dtype=torch.float64)
    heads = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    mlp = torch.zeros(n_layers, cfg.intermediate_size, dtype=torch.float64)
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)

    def lm_loss(x):
        logits = model(input_ids=x).logits[0, :-1].double()
        return float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))

    def on_layer(i):
        def hook(_m, args, kwargs, out):
            h_in = (args[0] if args else kwargs["hidden_states"])[0].double()
            h_out = (out[0] if isinstance(out, tuple) else out)[0].double()
            bi[i] += (1 - torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)).sum()
        return hook

    def on_o(i):
        def hook(_m, args):
            heads[i] += args[0][0].double().reshape(-1, n_heads, head_dim).norm(dim=-1).sum(0)
        return hook

    def on_down(i):
        def hook(_m, args):
            mlp[i] += args[0][0].double().abs().sum(0)
        return hook

    def on_norm(_m, _a, out):
        hidden.add_(out[0].double().abs().sum(0))

    handles = [model.model.norm.register_forward_hook(on_norm)]
    for i, layer in enumerate(layers):
        handles += [layer.register_forward_hook(on_layer(i), with_kwargs=True),
                    layer.self_attn.o_proj.register_forward_pre_hook(on_o(i)),
                    layer.mlp.down_proj.register_forward_pre_hook(on_down(i)),
                    layer.input_layernorm.register_forward_hook(on_norm),
                    layer.post_attention_layernorm.register_forward_hook(on_norm)]
    tokens, loss_sum = 0, 0.0
    with torch.inference_mode():
        for ids in windows:
            loss_sum += lm_loss(torch.tensor([ids]))
            tokens += len(ids)
    for h in handles:
        h.remove()
    predicted = sum(len(w) - 1 for w in windows)
    increase = None
    if layer_loss:
        skipped = torch.zeros(n_layers, dtype=torch.float64)

        def skip(_m, args, kwargs, out):
            h = args[0] if args else kwargs["hidden_states"]
            return (h, *out[1:]) if isinstance(out, tuple) else h

        for i, layer in enumerate(layers):
            h = layer.register_forward_hook(skip, with_kwargs=True)
            with torch.inference_mode():
                for ids in windows:
                    skipped[i] += lm_loss(torch.tensor([ids]))
            h.remove()
        increase = (skipped - loss_sum) / predicted
    return bi / tokens, heads / tokens, mlp / tokens, hidden / tokens, increase, tokens, loss_sum / predicted


def _old_imatrix(model, ids, window):
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    sums, counts, handles = {}, {}, []

    def hook_for(name):
        def hook(_m, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not (
                model.config.tie_word_embeddings and module is model.get_output_embeddings()):
            name = names.get_name(module_name + ".weight", try_suffixes=(".weight",))
            if name is not None:
                handles.append(module.register_forward_pre_hook(hook_for(name)))
    with torch.inference_mode():
        for b in range(0, len(ids), window):
            if len(ids[b:b + window]) > 1:
                model(input_ids=torch.tensor([ids[b:b + window]]))
    for h in handles:
        h.remove()
    return {k: (sums[k] / counts[k]).numpy().astype(np.float32) for k in sums}


@pytest.mark.parametrize("tied", [True, False])
def test_shared_pass_equals_the_old_collectors_bit_for_bit(tied):
    model = build_tiny_model("llama", tied=tied, num_hidden_layers=3)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 400, (301,), generator=g).tolist()
    windows = token_windows(ids, 64)
    imp = collect(model, windows, layer_loss=True)
    bi, heads, mlp, hidden, increase, tokens, loss = _old_importance(model, windows, layer_loss=True)
    for new, old in ((imp.block_influence, bi), (imp.heads, heads), (imp.mlp, mlp), (imp.hidden, hidden),
                     (imp.loss_increase, increase)):
        assert new.dtype == old.dtype and torch.equal(new, old)
    assert (imp.tokens, imp.loss) == (tokens, loss)

    expected = _old_imatrix(model, ids, 100)
    got = collect_imatrix(model, ARCHITECTURES["llama"], ids, window=100)
    assert list(got) == list(expected) and len(got) == 3 * 7 + (0 if tied else 1)
    for name in expected:
        assert got[name].dtype == np.float32 and np.array_equal(got[name], expected[name]), name

    # both statistics (and a plain loss) from one pass over the same windows
    both = calibrate(model, token_windows(ids, 100, min_len=2),
                     [ImportanceStatistic(model), ImatrixStatistic(ARCHITECTURES["llama"]), LMLoss()])
    assert list(both[1]) == list(expected) and all(np.array_equal(both[1][k], expected[k]) for k in expected)
    assert both[0].tokens == 300 and both[2] > 0  # the last window, one token, is left out


def test_calibration_progress_and_hooks_removed():
    model = build_tiny_model("llama")
    seen = []
    collect(model, token_windows(list(range(5, 105)), 40), layer_loss=True, progress=lambda d, n: seen.append((d, n)))
    assert seen == [(d, 9) for d in range(1, 10)]  # 3 windows x (1 full pass + 2 skipped layers)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
