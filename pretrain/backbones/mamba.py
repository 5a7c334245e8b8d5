"""Bidirectional Mamba backbone (SSAMBA / Audio Mamba), on Vim's block structure.

* Mixer: Mamba-1 selective SSM (in_proj → causal depthwise conv1d → SiLU → x_proj → dt_proj +
  softplus → selective scan with A = −exp(A_log), D skip, SiLU(z) gate → out_proj), with the
  reference initializations (mamba_ssm / Vim ``Mamba.__init__`` and ``VisionMamba`` init).
* Bidirectional variants (Vim ``bimamba_type``): ``"v2"`` "Bi-Bi" (SSAMBA, AuM-S): the backward
  scan has its own conv1d, x_proj, dt_proj, A_b_log and D_b and runs on the flipped sequence;
  in_proj and out_proj are shared; outputs summed (and halved when ``if_divide_out``).
  ``"v1"`` "Fo-Bi" (AuM-B): one conv, x_proj, dt_proj, D shared; only A_b separate; summed.
  ``"none"``: a causal Mamba.
* Blocks as Vim: ``residual = residual + drop_path(hidden); hidden = mixer(norm(residual))``;
  output ``norm_f(residual + drop_path(hidden))``. ``layer_pairing`` reproduces Vim's
  ``if_bidirectional`` (layers run in pairs, the second on the flipped sequence; ``"mean"`` as Vim,
  ``"sum"`` as SSAMBA's own forward).
* cls token: none, at the start (SSAMBA), or in the middle of the patch sequence (AuM, index N//2).
  The learned position embedding is stored as ``(1, num_cls + N, D)`` with the cls entry first (as
  AuM/SSAMBA store it) for the pretraining grid, and adapted to other grids with
  :func:`pretrain.patches.resize_pos_embed`.

Deliberate deviations (documented in the recipes too): tokens run in this project's time-major
order (AuM and SSAMBA scan frequency-major); SSAMBA's second application of ``norm_f`` before its
pretext heads is not reproduced (it belongs to a head, not the encoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, BackboneOutput
from .layers import DropPath, pos_embed_for_grid
from .mamba_lean import lean_scan_block, merge_directions, use_lean_backward
from .selective_scan import (
    LEAN_CHECKPOINT_TOKENS,
    ScanTerms,
    plan_chunks,
    scan_kernel_applies,
    scan_terms,
    selective_scan,
)

_CHOICES = {
    "bimamba": ("v2", "v1", "none"),
    "cls_position": ("none", "start", "middle"),
    "norm": ("layernorm", "rmsnorm"),
    "layer_pairing": ("none", "mean", "sum"),
    "dt_init": ("random", "constant"),
    "backward_dt_init": ("vim", "mamba"),
    "scan_impl": ("torch", "auto"),
    "lean_backward": ("auto", "always", "never"),
}


@dataclass
class MambaConfig:
    """Hyperparameters of the bidirectional Mamba backbone (defaults: SSAMBA's pretraining setup)."""

    dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | str = "auto"  # "auto" = ceil(dim / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    proj_bias: bool = False  # in_proj / out_proj bias (Mamba: none)
    bimamba: str = "v2"
    if_divide_out: bool = True  # v2: (forward + backward) / 2
    # Vim creates the backward dt_proj as a plain Linear whose bias its model init then zeroes
    # ("vim", what SSAMBA/AuM trained with); "mamba" initializes it like the forward one.
    backward_dt_init: str = "vim"
    cls_position: str = "start"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    drop_path: float = 0.1
    residual_in_fp32: bool = False
    pos_embed: bool = True
    layer_pairing: str = "none"
    # "auto": mamba_ssm's selective-scan and causal_conv1d's conv kernels when installed and the model
    # is on CUDA, else pure PyTorch; "torch": always the pure-PyTorch scan and conv.
    scan_impl: str = "auto"
    scan_block_tokens: int | None = None  # tokens per scan chunk (None: sized from a cache budget)
    # Pure-PyTorch training: "always" keeps only the in_proj output and the scan's chunk states for backward
    # and recomputes the rest (mamba_lean.py: ~6x less mixer activation memory, ~20% more mixer time on a
    # short batch); "never" keeps every intermediate (plain autograd); "auto" is lean for large calls only.
    lean_backward: str = "auto"

    def __post_init__(self) -> None:
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"mamba backbone option {key}={getattr(self, key)!r} is invalid; "
                                 f"choose one of {list(choices)}")
        for key in ("dim", "depth", "d_state", "expand", "d_conv"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"mamba backbone option {key} must be >= 1, got {getattr(self, key)!r}")
        if self.dt_rank != "auto" and (not isinstance(self.dt_rank, int) or self.dt_rank < 1):
            raise ValueError(f"mamba backbone option dt_rank must be 'auto' or a positive int, got {self.dt_rank!r}")
        if self.layer_pairing != "none" and self.depth % 2:
            raise ValueError(f"mamba backbone layer_pairing={self.layer_pairing!r} needs an even depth, "
                             f"got depth={self.depth}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"mamba backbone option drop_path must be in [0, 1), got {self.drop_path}")

    @property
    def num_cls(self) -> int:
        return 0 if self.cls_position == "none" else 1

    @property
    def d_inner(self) -> int:
        return self.expand * self.dim

    @property
    def rank(self) -> int:
        return math.ceil(self.dim / 16) if self.dt_rank == "auto" else int(self.dt_rank)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` (mamba_ssm's RMSNorm: weight only, eps inside the root)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


def _make_norm(config: MambaConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.dim, eps=config.norm_eps)
    return nn.LayerNorm(config.dim, eps=config.norm_eps)


def _init_dt_proj(dt_proj: nn.Linear, config: MambaConfig) -> None:
    """mamba_ssm's dt init: weight U(±rank^-½·scale), bias = softplus⁻¹(dt), dt log-uniform."""
    std = config.rank**-0.5 * config.dt_scale
    with torch.no_grad():
        if config.dt_init == "constant":
            dt_proj.weight.fill_(std)
        else:
            dt_proj.weight.uniform_(-std, std)
        dt = torch.exp(
            torch.rand(config.d_inner) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min)
        ).clamp(min=config.dt_init_floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus


def _s4d_real_log(d_inner: int, d_state: int) -> torch.Tensor:
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)


def _causal_conv1d_kernel() -> Any:
    try:
        from causal_conv1d import causal_conv1d_fn  # type: ignore
    except ImportError:
        return None
    return causal_conv1d_fn


class BiMambaMixer(nn.Module):
    """Mamba-1 mixer with Vim's bidirectional variants; ``(B, L, D) -> (B, L, D)``."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        e, n, r = config.d_inner, config.d_state, config.rank
        self.in_proj = nn.Linear(config.dim, 2 * e, bias=config.proj_bias)
        self.conv1d = nn.Conv1d(e, e, config.d_conv, groups=e, padding=config.d_conv - 1, bias=config.conv_bias)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        _init_dt_proj(self.dt_proj, config)
        self.A_log = nn.Parameter(_s4d_real_log(e, n))
        self.D = nn.Parameter(torch.ones(e))
        if config.bimamba in ("v1", "v2"):
            self.A_b_log = nn.Parameter(_s4d_real_log(e, n))
        if config.bimamba == "v2":
            self.conv1d_b = nn.Conv1d(e, e, config.d_conv, groups=e, padding=config.d_conv - 1, bias=config.conv_bias)
            self.x_proj_b = nn.Linear(e, r + 2 * n, bias=False)
            self.dt_proj_b = nn.Linear(r, e, bias=True)
            if config.backward_dt_init == "mamba":
                _init_dt_proj(self.dt_proj_b, config)
            else:
                nn.init.zeros_(self.dt_proj_b.bias)
            self.D_b = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, config.dim, bias=config.proj_bias)

    def _conv(self, convs: list[nn.Conv1d], x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv + SiLU on ``(G·B, L, E)``, group ``g`` of the rows through ``convs[g]``
        (``causal_conv1d``'s fused kernel on CUDA with ``scan_impl="auto"`` when it is installed)."""
        if self.config.scan_impl == "auto" and x.is_cuda and (kernel := _causal_conv1d_kernel()) is not None:
            return torch.cat([
                kernel(rows.transpose(1, 2).contiguous(), conv.weight.squeeze(1), conv.bias,
                       activation="silu").transpose(1, 2)
                for conv, rows in zip(convs, x.chunk(len(convs)))
            ])
        # As `width` shifted multiply-adds in the (B, L, E) layout, every group at once: no transposes, and
        # on CPU about twice as fast forward+backward as Conv1d's grouped kernel; the same sums as the conv.
        groups, length, width = len(convs), x.shape[1], convs[0].weight.shape[-1]
        w = torch.stack([conv.weight[:, 0].T for conv in convs])[:, :, None, None]  # (G, width, 1, 1, E)
        xp = F.pad(x, (0, 0, width - 1, 0)).unflatten(0, (groups, -1))  # (G, B, L + width - 1, E)
        last = xp[:, :, width - 1 :]
        if convs[0].bias is None:
            y = last * w[:, -1]
        else:
            y = torch.addcmul(torch.stack([conv.bias for conv in convs])[:, None, None], last, w[:, -1])
        for k in range(width - 1):
            y = torch.addcmul(y, xp[:, :, k : k + length], w[:, k])
        return F.silu(y).flatten(0, 1)

    def _scan_inputs(self, u: torch.Tensor, x_projs: list[nn.Linear], dt_projs: list[nn.Linear]):
        """``(Δ before bias and softplus, B, C)`` of ``(G·B, L, E)`` rows, group ``g`` through ``x_projs[g]``
        and ``dt_projs[g]`` (one batched matmul per projection for all groups)."""
        n, r = self.config.d_state, self.config.rank
        groups, length = len(x_projs), u.shape[1]
        rows = u.reshape(groups, -1, u.shape[-1])
        proj = torch.bmm(rows, torch.stack([p.weight.T for p in x_projs]))  # (G, B·L, r + 2N)
        dt, B, C = torch.split(proj, [r, n, n], dim=-1)
        delta = torch.bmm(dt, torch.stack([p.weight.T for p in dt_projs]))

        def per_row(t: torch.Tensor) -> torch.Tensor:  # (G, B·L, F) -> (G·B, L, F)
            return t.reshape(-1, length, t.shape[-1])

        return per_row(delta), per_row(B), per_row(C)

    def _scan_args(self, xz: torch.Tensor) -> dict[str, Any]:
        """The selective scan's arguments for the ``in_proj`` output: both directions as one batched scan
        (the batch holds the forward rows, then the flipped ones)."""
        x, z = xz.chunk(2, dim=-1)
        kind = self.config.bimamba
        A_log, D, bias = [self.A_log], [self.D], [self.dt_proj.bias]
        if kind == "v2":
            # Bi-Bi: the backward branch is causal in the reversed direction, with its own parameters; both
            # branches run as one batch of rows from here on.
            u = self._conv([self.conv1d, self.conv1d_b], torch.cat([x, x.flip(1)]))
            delta, B, C = self._scan_inputs(u, [self.x_proj, self.x_proj_b], [self.dt_proj, self.dt_proj_b])
            z = torch.cat([z, z.flip(1)])
            A_log, D, bias = A_log + [self.A_b_log], D + [self.D_b], bias + [self.dt_proj_b.bias]
        else:
            u = self._conv([self.conv1d], x)
            delta, B, C = self._scan_inputs(u, [self.x_proj], [self.dt_proj])
            if kind == "v1":
                # Fo-Bi: the same conv output, Δ, B, C, D and gate, scanned backwards with A_b.
                u, delta, B, C, z = (torch.cat([t, t.flip(1)]) for t in (u, delta, B, C, z))
                A_log, D, bias = A_log + [self.A_b_log], D * 2, bias * 2
        return dict(u=u, delta=delta, A=-torch.exp(torch.stack(A_log).float()), B=B, C=C,
                    D=torch.stack(D).float(), z=z, delta_bias=torch.stack(bias).float(), delta_softplus=True)

    def _scan_terms(self, xz: torch.Tensor) -> tuple[ScanTerms, tuple[int, int, int]]:
        """The pure-PyTorch scan's terms and chunk plan for the ``in_proj`` output (the lean backward's
        recompute)."""
        terms = scan_terms(**self._scan_args(xz))
        batch, length, channels = terms.u.shape
        return terms, plan_chunks(batch, length, channels, terms.A.shape[2], self.config.scan_block_tokens,
                                  checkpoint_tokens=LEAN_CHECKPOINT_TOKENS)

    def _merge(self) -> tuple[int, float]:
        """``(directions, scale)`` of :func:`merge_directions` for this variant."""
        kind = self.config.bimamba
        return (1, 1.0) if kind == "none" else (2, 0.5 if kind == "v2" and self.config.if_divide_out else 1.0)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        xz = self.in_proj(hidden)
        cfg = self.config
        if torch.is_grad_enabled() and use_lean_backward(cfg.lean_backward, xz, scan_kernel_applies(cfg.scan_impl, xz)):
            params = [p for name, p in self.named_parameters() if not name.startswith(("in_proj", "out_proj"))]
            return lean_scan_block(self._scan_terms, xz, self.out_proj, params, *self._merge())
        y = selective_scan(**self._scan_args(xz), block_tokens=cfg.scan_block_tokens, impl=cfg.scan_impl)
        return self.out_proj(merge_directions(y, *self._merge()).to(hidden.dtype))


class MambaBlock(nn.Module):
    """Vim's add → norm → mixer block; returns ``(mixer output, residual stream)``."""

    def __init__(self, config: MambaConfig, drop_path: float):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = _make_norm(config)
        self.mixer = BiMambaMixer(config)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(hidden), residual


class MambaBackbone(Backbone):
    """Bidirectional Mamba over embedded patch tokens; see the module docstring."""

    name: ClassVar[str] = "mamba"
    Config: ClassVar[type] = MambaConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"dim": 192, "depth": 24},
        "small": {"dim": 384, "depth": 24},
        "base": {"dim": 768, "depth": 24},
    }

    def __init__(self, config: MambaConfig, grid: tuple[int, int], patch: tuple[int, int]):
        super().__init__(config, grid, patch)
        dim, n_cls = config.dim, config.num_cls
        if n_cls:
            self.cls_token = nn.Parameter(torch.zeros(1, n_cls, dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if config.pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, n_cls + self.grid[0] * self.grid[1], dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # Vim's stochastic depth: block i drops its *incoming* mixer output with rate [0, dpr...][i],
        # the final add uses the full rate, so mixer j's output is dropped with dpr[j].
        dpr = torch.linspace(0, config.drop_path, config.depth).tolist()
        rates = [0.0] + dpr[:-1]
        self.layers = nn.ModuleList(MambaBlock(config, rates[i]) for i in range(config.depth))
        self.drop_path = DropPath(config.drop_path)
        self.norm_f = _make_norm(config)
        self._reference_init()

    def _reference_init(self) -> None:
        """Vim/mamba_ssm ``_init_weights``: zero Linear biases except dt_proj's, rescale out_proj."""
        for layer in self.layers:
            mixer = layer.mixer
            for module in mixer.modules():
                if isinstance(module, nn.Linear) and module.bias is not None and module is not mixer.dt_proj:
                    if module is getattr(mixer, "dt_proj_b", None) and self.config.backward_dt_init == "mamba":
                        continue
                    nn.init.zeros_(module.bias)
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                mixer.out_proj.weight /= math.sqrt(self.config.depth)

    # ----- optimizer hooks -----
    def layer_id(self, param_name: str) -> int:
        if param_name.startswith("layers."):
            return int(param_name.split(".")[1]) + 1
        if param_name.startswith(("cls_token", "pos_embed")):
            return 0
        return self.num_layers + 1  # norm_f

    def no_weight_decay(self) -> set[str]:
        return {
            name
            for name, _ in self.named_parameters()
            if name in ("cls_token", "pos_embed") or name.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D", "D_b")
        }

    # ----- forward -----
    def _positions(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return pos_embed_for_grid(self.pos_embed, self.config.num_cls, self.grid, grid)

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        batch, n, dim = x.shape
        if n != grid[0] * grid[1] or dim != self.config.dim:
            raise ValueError(f"mamba backbone expected tokens (batch, {grid[0] * grid[1]}, {self.config.dim}) "
                             f"for grid {tuple(grid)}, got {tuple(x.shape)}")
        n_cls = self.config.num_cls
        if self.config.pos_embed:
            cls_pos, patch_pos = self._positions(grid)
            x = x + patch_pos.to(x.dtype)
        cls_at = 0
        if n_cls:
            cls = self.cls_token.expand(batch, -1, -1).to(x.dtype)
            if self.config.pos_embed:
                cls = cls + cls_pos.to(x.dtype)
            cls_at = n // 2 if self.config.cls_position == "middle" else 0
            x = torch.cat([x[:, :cls_at], cls, x[:, cls_at:]], dim=1)

        def patches_of(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[:, :cls_at], t[:, cls_at + n_cls:]], dim=1) if n_cls else t

        hidden, residual = x, None
        states: list[torch.Tensor] | None = [] if output_hidden_states else None
        if self.config.layer_pairing == "none":
            for layer in self.layers:
                hidden, residual = self.run_block(layer, hidden, residual)
                if states is not None:
                    states.append(patches_of(residual + hidden))
        else:
            scale = 0.5 if self.config.layer_pairing == "mean" else 1.0
            for i in range(0, len(self.layers), 2):
                h_f, r_f = self.run_block(self.layers[i], hidden, residual)
                h_b, r_b = self.run_block(
                    self.layers[i + 1], hidden.flip(1), None if residual is None else residual.flip(1)
                )
                hidden, residual = (h_f + h_b.flip(1)) * scale, (r_f + r_b.flip(1)) * scale
                if states is not None:
                    states.append(patches_of(r_f + h_f))
                    states.append(patches_of(residual + hidden))
        out = self.norm_f((residual + self.drop_path(hidden)).to(self.norm_f.weight.dtype))
        cls_out = out[:, cls_at : cls_at + n_cls] if n_cls else None
        return BackboneOutput(patches=patches_of(out), cls=cls_out, hidden_states=states)
