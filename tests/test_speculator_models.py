"""Arctic speculators (arctic_gen.models): config parsing, shapes, tying, Arctic/IBM checkpoint names, the math
against a plain re-derivation from Arctic's checkpoint tensors, save/load round trips, propose vs forward."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from arctic_gen.models.lstm_speculator import LSTMSpeculator
from arctic_gen.models.mlp_speculator import MLPSpeculator
from arctic_gen.models.speculator_config import (
    ARCTIC_ARCH,
    IBM_ARCH,
    SpeculatorConfig,
    SpeculatorLoadError,
    build_speculator,
    load_speculator,
    save_speculator,
)

H, V = 24, 97


def _config(**kw) -> SpeculatorConfig:
    base = {"n_predict": 3, "input_hidden_dim": H, "inner_dim": "32", "emb_dim": "32", "proj_dim": "32",
            "vocab_size": V}
    return SpeculatorConfig(**{**base, **kw})


VARIANTS = {
    "mlp": _config(),
    "mlp_tied": _config(tie_weights=True, scale_input=True),
    "mlp_deep": _config(inner_dim="32.40", emb_dim="32.32", proj_dim="32.32"),
    "mlp_ibm": _config(architecture=IBM_ARCH, tie_weights=True),
    "lstm": _config(method="sum_lstm", tie_weights=True, tie_lstm_embs=True),
    "lstm_untied_embs": _config(method="sum_lstm", tie_weights=True, tie_lstm_embs=False, scale_input=True),
}


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_speculator(VARIANTS[name])
    with torch.no_grad():  # non-trivial norms so that every parameter matters
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.3)
    return model.eval()


# --- a plain re-derivation from Arctic's checkpoint tensors (names as ArcticTraining writes them) -------------


def _norm(x, w=None, b=None):
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return x if w is None else x * w + b


def _reference_logits(cfg: SpeculatorConfig, sd: dict, hidden, ids):
    n, length = cfg.n_predict, hidden.shape[1]
    sw = 0.5 ** (0.5 / n)
    alpha = math.sqrt((1 - sw**2) * cfg.inner_dim[0] / 2) / sw
    state = _norm(hidden) / math.sqrt(2) if cfg.scale_input else hidden
    cell = torch.zeros(*hidden.shape[:-1], cfg.inner_dim[-1])
    out = []
    for i in range(n):
        toks = ids[:, i + 1:i + 1 + length]
        if cfg.method == "sum_lstm":
            j = 0 if i == 0 else 1

            def gate(g, st=state, tk=toks, jj=j):
                return st @ sd[f"{g}_proj.{jj}.weight"].T + alpha * F.embedding(tk, sd[f"{g}_emb.0.weight"])

            f, inp, o = torch.sigmoid(gate("forget")), torch.sigmoid(gate("input")), torch.sigmoid(gate("output"))
            cand = F.gelu(_norm(gate("cell"), sd["cell_ln.0.weight"], sd["cell_ln.0.bias"])) * inp
            cell = cell * f + cand
            state = F.gelu(_norm(cell, sd["state_ln.0.weight"], sd["state_ln.0.bias"])) * o
        elif cfg.architecture == IBM_ARCH:
            s = state @ sd[f"proj.{i}.weight"].T + alpha * F.embedding(toks, sd[f"emb.{i}.weight"])
            state = F.gelu(_norm(s, sd[f"ln.{i}.weight"], sd[f"ln.{i}.bias"]))
        else:
            k = 0 if cfg.tie_weights else i
            p = min(i, 1) if cfg.tie_weights else i
            z = F.embedding(toks, sd[f"emb.{k}.0.weight"])
            for layer in range(1, len(cfg.emb_dim)):
                z = F.gelu(_norm(z, sd[f"emb.{k}.{3 * layer - 2}.weight"], sd[f"emb.{k}.{3 * layer - 2}.bias"]))
                z = z @ sd[f"emb.{k}.{3 * layer}.weight"].T
            s = state @ sd[f"proj.{p}.0.weight"].T
            for layer in range(1, len(cfg.proj_dim)):
                s = F.gelu(_norm(s, sd[f"proj.{p}.{3 * layer - 2}.weight"], sd[f"proj.{p}.{3 * layer - 2}.bias"]))
                s = s @ sd[f"proj.{p}.{3 * layer}.weight"].T
            s = _norm(s + alpha * z, sd[f"ln.{k}.0.weight"], sd[f"ln.{k}.0.bias"])
            for layer in range(1, len(cfg.inner_dim)):
                s = F.gelu(s) @ sd[f"ln.{k}.{3 * layer - 1}.weight"].T
                s = _norm(s, sd[f"ln.{k}.{3 * layer}.weight"], sd[f"ln.{k}.{3 * layer}.bias"])
            state = F.gelu(s)
        out.append(state @ sd[f"head.{i}.weight"].T)
    return torch.stack(out)


def _inputs(batch=2, length=5, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, H, generator=g), torch.randint(0, V, (batch, length + n), generator=g)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_matches_reference_from_arctic_names(name):
    model = _model(name)
    hidden, ids = _inputs()
    logits = model(hidden, ids)
    assert logits.shape == (3, 2, 5, V)
    ref = _reference_logits(model.config, model.arctic_state_dict(), hidden, ids)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_arctic_checkpoint_names():
    lstm = set(_model("lstm").arctic_state_dict())
    gates = ("forget", "input", "cell", "output")
    assert lstm == ({f"{g}_emb.0.weight" for g in gates} | {f"{g}_proj.{j}.weight" for g in gates for j in (0, 1)}
                    | {"cell_ln.0.weight", "cell_ln.0.bias", "state_ln.0.weight", "state_ln.0.bias"}
                    | {f"head.{i}.weight" for i in range(3)})
    tied = set(_model("mlp_tied").arctic_state_dict())
    assert tied == {"emb.0.0.weight", "proj.0.0.weight", "proj.1.0.weight", "ln.0.0.weight", "ln.0.0.bias",
                    "head.0.weight", "head.1.weight", "head.2.weight"}
    untied = set(_model("mlp").arctic_state_dict())
    assert untied == {f"{m}.{i}.0.weight" for m in ("emb", "proj", "ln") for i in range(3)} | {
        f"ln.{i}.0.bias" for i in range(3)} | {f"head.{i}.weight" for i in range(3)}
    ibm = set(_model("mlp_ibm").arctic_state_dict())
    assert ibm == {f"{m}.{i}.weight" for m in ("emb", "proj", "ln", "head") for i in range(3)} | {
        f"ln.{i}.bias" for i in range(3)}


def test_tied_weights_share_storage_and_untied_do_not():
    tied, untied = _model("mlp_tied"), _model("mlp")
    assert tied.head[0].weight is tied.head[2].weight and tied.emb[0] is not None and len(tied.emb) == 1
    assert untied.head[0].weight is not untied.head[1].weight
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_tied < n_untied
    lstm = _model("lstm")
    assert lstm.head[0].weight is lstm.head[2].weight
    assert lstm.emb[0].weight.shape == (V, 32) and _model("lstm_untied_embs").emb[0].weight.shape == (V, 128)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_propose_is_the_greedy_chain_of_forward(name):
    model = _model(name, seed=3)
    g = torch.Generator().manual_seed(7)
    hidden, last = torch.randn(6, H, generator=g), torch.randint(0, V, (6,), generator=g)
    drafts = model.propose(hidden, last, 3)
    assert drafts.shape == (6, 3) and drafts.dtype == torch.int64
    ids = torch.cat([torch.zeros(6, 1, dtype=torch.long), last[:, None], drafts[:, :2]], dim=1)  # T=1, T+n=4
    chain = model(hidden[:, None], ids).argmax(-1)[:, :, 0].T
    assert torch.equal(chain, drafts)
    assert torch.equal(model.propose(hidden, last, 2), drafts[:, :2])
    with pytest.raises(ValueError):
        model.propose(hidden, last, 4)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_save_load_round_trip_is_identical(name, tmp_path):
    model = _model(name, seed=5)
    save_speculator(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "mlp_speculator"
    assert cfg["architectures"] == [model.config.architecture]
    if model.config.architecture == ARCTIC_ARCH:
        assert isinstance(cfg["inner_dim"], str) and cfg["method"] == model.config.method
    loaded = load_speculator(tmp_path, "cpu", torch.float32)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    hidden, ids = _inputs(seed=9)
    torch.testing.assert_close(loaded(hidden, ids), model(hidden, ids), rtol=0, atol=0)
    assert torch.equal(loaded.propose(hidden[:, 0], ids[:, 1], 3), model.propose(hidden[:, 0], ids[:, 1], 3))


def test_loads_arctic_training_bin_with_aliases_and_prefix(tmp_path):
    """ArcticTraining writes torch.save(state_dict) (tied aliases included); some exports carry 'speculator.'."""
    model = _model("lstm", seed=11)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    torch.save({f"speculator.{k}": v for k, v in model.arctic_state_dict().items()}, tmp_path / "pytorch_model.bin")
    assert load_speculator(tmp_path, "cpu", torch.bfloat16).dtype == torch.bfloat16
    loaded = load_speculator(tmp_path, "cpu", torch.float32)
    assert isinstance(loaded, LSTMSpeculator)
    hidden, ids = _inputs(seed=2)
    torch.testing.assert_close(loaded(hidden, ids), model(hidden, ids), rtol=0, atol=0)


def test_ibm_tied_checkpoint_without_aliases_loads(tmp_path):
    model = _model("mlp_ibm", seed=4)
    weights = {k: v for k, v in model.arctic_state_dict().items()
               if k.endswith(".0.weight") or k in ("ln.0.bias", "proj.1.weight")}
    (tmp_path / "config.json").write_text(json.dumps({**model.config.to_dict(), "architectures": [
        "ArcticMLPSpeculatorPreTrainedModel"]}))
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "model.safetensors"))
    loaded = load_speculator(tmp_path, "cpu", torch.float32)
    assert isinstance(loaded, MLPSpeculator)
    hidden, ids = _inputs(seed=3)
    torch.testing.assert_close(loaded(hidden, ids), model(hidden, ids), rtol=0, atol=0)


def test_config_fields_and_layouts():
    cfg = SpeculatorConfig.from_dict({"architectures": [ARCTIC_ARCH], "model_type": "mlp_speculator",
                                      "n_predict": 3, "input_hidden_dim": 576, "inner_dim": "1024.768",
                                      "emb_dim": "1024", "proj_dim": "1024", "vocab_size": 49152,
                                      "tie_weights": True, "scale_input": True, "tie_lstm_embs": False,
                                      "method": "sum_rnn"})
    assert cfg.inner_dim == (1024, 768) and cfg.width == 768 and cfg.input_hidden_dim == 576
    assert SpeculatorConfig.from_dict(cfg.to_dict()) == cfg
    ibm = SpeculatorConfig.from_dict({"architectures": [IBM_ARCH], "model_type": "mlp_speculator", "n_predict": 4,
                                      "emb_dim": 4096, "inner_dim": 3072, "vocab_size": 128256,
                                      "tie_weights": True, "scale_input": True})
    assert (ibm.input_hidden_dim, ibm.width, ibm.method, ibm.architecture) == (4096, 3072, "sum_rnn", IBM_ARCH)
    assert ibm.to_dict()["emb_dim"] == 4096 and SpeculatorConfig.from_dict(ibm.to_dict()) == ibm


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(model_type="llama"), "model_type"),
    (lambda c: c.update(method="sum_gru"), "method"),
    (lambda c: c.update(method="sum_lstm", tie_weights=False), "tie_weights"),
    (lambda c: c.update(inner_dim="32.x"), "inner_dim"),
    (lambda c: c.update(proj_dim="16"), "equal"),
    (lambda c: c.update(architectures=["LlamaForCausalLM"]), "architecture"),
    (lambda c: c.pop("input_hidden_dim"), "missing"),
    (lambda c: c.update(n_predict=0), "n_predict"),
])
def test_bad_configs_raise_load_error(tmp_path, mutate, message):
    model = _model("mlp")
    save_speculator(model, tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    mutate(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(SpeculatorLoadError, match=message):
        load_speculator(tmp_path, "cpu", torch.float32)


def test_bad_directories_raise_load_error(tmp_path):
    with pytest.raises(SpeculatorLoadError, match="does not exist"):
        load_speculator(tmp_path / "absent", "cpu", torch.float32)
    with pytest.raises(SpeculatorLoadError, match="no config.json"):
        load_speculator(tmp_path, "cpu", torch.float32)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpeculatorLoadError, match="not valid JSON"):
        load_speculator(tmp_path, "cpu", torch.float32)
    model = _model("lstm")
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    with pytest.raises(SpeculatorLoadError, match="no \\*.safetensors"):
        load_speculator(tmp_path, "cpu", torch.float32)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SpeculatorLoadError, match="unreadable weights"):
        load_speculator(tmp_path, "cpu", torch.float32)
    from safetensors.torch import save_file

    weights = model.arctic_state_dict()
    del weights["cell_ln.0.bias"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(SpeculatorLoadError, match="missing \\['cell_ln.0.bias'\\]"):
        load_speculator(tmp_path, "cpu", torch.float32)
    weights = model.arctic_state_dict()
    weights["head.0.weight"] = torch.zeros(V + 1, 32)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(SpeculatorLoadError, match="head.0.weight has shape"):
        load_speculator(tmp_path, "cpu", torch.float32)
    assert issubclass(SpeculatorLoadError, ValueError)
