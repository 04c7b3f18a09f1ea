"""MLP speculator (`method: "sum_rnn"`): IBM's MLPSpeculator (arXiv 2404.19124) as Arctic trains and serves it.

Step i (state s_0 = the base model's last hidden state, token x_0 = the token just sampled):
    s_{i+1} = GELU(LN_i(proj_i(s_i) + (emb_w / state_w) * emb_i(x_i)))      logits_i = head_i(s_{i+1})
with state_w = 0.5 ** (0.5 / n_predict) and emb_w = sqrt((1 - state_w²) * inner_dim / 2); x_{i+1} is the greedy
token of logits_i at inference and the ground truth in training. `tie_weights` shares emb/LN/head across steps
and proj across steps >= 1. emb, proj and LN are nn.Sequential stacks so that several widths ("4096.4096") give
Arctic's extra layers under Arctic's names.
"""

from __future__ import annotations

from torch import Tensor, nn

from arctic_gen.models.speculator_config import IBM_ARCH, Speculator, SpeculatorConfig, SpeculatorNorm


def _emb_stack(config: SpeculatorConfig) -> nn.Sequential:
    dims = config.emb_dim
    layers: list[nn.Module] = [nn.Embedding(config.vocab_size, dims[0])]
    for k in range(1, len(dims)):
        layers += [SpeculatorNorm(dims[k]), nn.GELU(), nn.Linear(dims[k - 1], dims[k], bias=False)]
    return nn.Sequential(*layers)


def _proj_stack(config: SpeculatorConfig, in_dim: int) -> nn.Sequential:
    dims = config.proj_dim
    layers: list[nn.Module] = [nn.Linear(in_dim, dims[0], bias=False)]
    for k in range(1, len(dims)):
        layers += [SpeculatorNorm(dims[k]), nn.GELU(), nn.Linear(dims[k - 1], dims[k], bias=False)]
    return nn.Sequential(*layers)


def _norm_stack(config: SpeculatorConfig) -> nn.Sequential:
    dims = config.inner_dim
    layers: list[nn.Module] = [SpeculatorNorm(dims[0])]
    for k in range(1, len(dims)):
        layers += [nn.GELU(), nn.Linear(dims[k - 1], dims[k], bias=False), SpeculatorNorm(dims[k])]
    return nn.Sequential(*layers)


class MLPSpeculator(Speculator):
    """sum_rnn speculator; module names are Arctic's checkpoint names (emb.{k}.0.weight, proj.{k}.0.weight,
    ln.{k}.0.weight, head.{i}.weight); IBM's layout is mapped in `_checkpoint_names`."""

    def __init__(self, config: SpeculatorConfig) -> None:
        if config.method != "sum_rnn":
            raise ValueError(f"MLPSpeculator is method sum_rnn, got {config.method!r}")
        super().__init__(config)
        n = config.n_predict
        tied = config.tie_weights
        self.emb = nn.ModuleList([_emb_stack(config) for _ in range(1 if tied else n)])
        self.proj = nn.ModuleList([_proj_stack(config, config.input_hidden_dim if k == 0 else config.width)
                                   for k in range(min(2, n) if tied else n)])
        self.ln = nn.ModuleList([_norm_stack(config) for _ in range(1 if tied else n)])
        if tied:
            head = nn.Linear(config.width, config.vocab_size, bias=False)
            self.head = nn.ModuleList([head] * n)
        else:
            self.head = nn.ModuleList([nn.Linear(config.width, config.vocab_size, bias=False) for _ in range(n)])

    def _emb_index(self, i: int) -> int:
        return 0 if self.config.tie_weights else i

    def _proj_index(self, i: int) -> int:
        return min(i, 1) if self.config.tie_weights else i

    def initial_carry(self, hidden: Tensor) -> Tensor:
        return self._scaled_input(hidden)

    def step(self, i: int, carry: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        k = self._emb_index(i)
        state = self.proj[self._proj_index(i)](carry)
        state = state.add(self.emb[k](tokens), alpha=self.state_to_emb)
        state = self.activation(self.ln[k](state))
        return state, state

    def _checkpoint_names(self) -> list[tuple[str, str, None]]:
        if self.config.architecture != IBM_ARCH:
            return [(key, key, None) for key in self.state_dict(keep_vars=True)]
        names = []
        for i in range(self.n_predict):  # IBM's layout names every step, tied or not
            k, p = self._emb_index(i), self._proj_index(i)
            names += [(f"emb.{i}.weight", f"emb.{k}.0.weight", None),
                      (f"proj.{i}.weight", f"proj.{p}.0.weight", None),
                      (f"ln.{i}.weight", f"ln.{k}.0.weight", None),
                      (f"ln.{i}.bias", f"ln.{k}.0.bias", None),
                      (f"head.{i}.weight", f"head.{i}.weight", None)]
        return names
