"""LSTM speculator (`method: "sum_lstm"`): Arctic's recurrent variant of the MLP speculator.

Per step i (state s_0 = the base model's last hidden state, cell c_0 = 0, token x_0 = the token just sampled),
with a = emb_w / state_w as in the MLP speculator and P = proj_dim:
    g = proj_i(s_i) + a * emb(x_i)                       4 blocks of P: forget, input, output, cell candidate
    f, in, o = sigmoid(g_f), sigmoid(g_in), sigmoid(g_o)
    c_{i+1} = c_i * f + GELU(cell_ln(g_cand)) * in
    s_{i+1} = GELU(state_ln(c_{i+1})) * o                logits_i = head_i(s_{i+1})
Weights are tied across steps (proj_0 reads the base hidden size, proj_1 every later step). With
`tie_lstm_embs` one embedding of width P is added to all four blocks; otherwise each block has its own.

Internally the four gate projections are one [4P, in] matrix (one matmul per step) in the order forget, input,
output, cell; the checkpoint keeps Arctic's separate `{forget,input,cell,output}_proj` / `_emb` names.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from arctic_gen.models.speculator_config import Speculator, SpeculatorConfig, SpeculatorNorm

GATES = ("forget", "input", "output", "cell")


class LSTMSpeculator(Speculator):
    def __init__(self, config: SpeculatorConfig) -> None:
        if config.method != "sum_lstm":
            raise ValueError(f"LSTMSpeculator is method sum_lstm, got {config.method!r}")
        super().__init__(config)
        p = config.proj_dim[0]
        self.gate_dim = p
        self.emb = nn.ModuleList([nn.Embedding(config.vocab_size, p if config.tie_lstm_embs else 4 * p)])
        self.projs = nn.ModuleList([nn.Linear(config.input_hidden_dim, 4 * p, bias=False),
                                    nn.Linear(config.width, 4 * p, bias=False)])
        self.cell_ln = nn.ModuleList([SpeculatorNorm(p)])
        self.state_ln = nn.ModuleList([SpeculatorNorm(p)])
        head = nn.Linear(config.width, config.vocab_size, bias=False)
        self.head = nn.ModuleList([head] * config.n_predict)

    def initial_carry(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        state = self._scaled_input(hidden)
        return state, state.new_zeros(*state.shape[:-1], self.gate_dim)

    def step(self, i: int, carry: tuple[Tensor, Tensor], tokens: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        state, cell = carry
        p = self.gate_dim
        pre = self.projs[min(i, 1)](state)
        emb = self.emb[0](tokens)
        if self.config.tie_lstm_embs:
            pre = pre.unflatten(-1, (4, p)).add(emb.unsqueeze(-2), alpha=self.state_to_emb).flatten(-2)
        else:
            pre = pre.add(emb, alpha=self.state_to_emb)
        forget, inp, out = torch.sigmoid(pre[..., :3 * p]).chunk(3, dim=-1)
        candidate = self.activation(self.cell_ln[0](pre[..., 3 * p:])) * inp
        cell = cell * forget + candidate
        state = self.activation(self.state_ln[0](cell)) * out
        return (state, cell), state

    def _checkpoint_names(self) -> list[tuple[str, str, tuple[slice, ...] | None]]:
        p = self.gate_dim
        names: list[tuple[str, str, tuple[slice, ...] | None]] = []
        for g, gate in enumerate(GATES):
            block = slice(g * p, (g + 1) * p)
            if self.config.tie_lstm_embs:
                names.append((f"{gate}_emb.0.weight", "emb.0.weight", None))
            else:
                names.append((f"{gate}_emb.0.weight", "emb.0.weight", (slice(None), block)))
            for j in range(2):
                names.append((f"{gate}_proj.{j}.weight", f"projs.{j}.weight", (block,)))
        for ln in ("cell_ln", "state_ln"):
            names += [(f"{ln}.0.weight", f"{ln}.0.weight", None), (f"{ln}.0.bias", f"{ln}.0.bias", None)]
        names += [(f"head.{i}.weight", f"head.{i}.weight", None) for i in range(self.n_predict)]
        return names
