"""Named methods as points of the design space: data, not code paths.

Each preset is the whole method: read its config to know what it trains. Sources are the sections
of ALGORITHMS.md (He et al.'s released flags, §3.3; adapter-transformers semantics, §1.1). Sizes
given as ``reduction_factor`` scale with the backbone (bottleneck = hidden // factor); absolute
sizes (``attn_bn``/``ffn_bn``) are the paper's.
"""

from __future__ import annotations

from typing import Any

def _over_sources(mixture: str, summary: str, source: str, learning_rate: float, **config: Any) -> dict[str, Any]:
    """A stage-2 preset: the ``mixture`` combination at Pfeiffer's position over frozen source adapters."""
    return {"summary": summary, "source": source, "learning_rate": learning_rate, "needs_sources": True,
            "config": dict(ffn_mode="adapter", ffn_option="pfeiffer", param_source="scaled_mixture", mixture=mixture,
                           **config)}


PRESETS: dict[str, dict[str, Any]] = {
    "houlsby": {
        "summary": "Sequential adapters after attention and after the FFN (Houlsby et al. 2019)",
        "source": "§1.1 (adapter-transformers: reduction factor 16, swish) and §3.3 (attention adapter with LN 'in')",
        "learning_rate": 1e-3,
        "config": dict(
            attn_mode="adapter", attn_option="sequential",
            ffn_mode="adapter", ffn_option="sequential",
            ffn_adapter_layernorm_option="none", ffn_adapter_init_option="bert", ffn_adapter_scalar=1.0,
            reduction_factor=16, adapter_act="swish",
        ),
    },
    "pfeiffer": {
        "summary": "One sequential adapter after the FFN, Pfeiffer placement (LN reused twice)",
        "source": "§1.1 (reduction factor 16, ReLU, bert init); ScaLearn stage 1 (§5.1)",
        "learning_rate": 1e-3,
        "config": dict(
            ffn_mode="adapter", ffn_option="pfeiffer",
            ffn_adapter_layernorm_option="none", ffn_adapter_init_option="bert", ffn_adapter_scalar=1.0,
            reduction_factor=16, adapter_act="relu",
        ),
    },
    "parallel": {
        "summary": "Parallel adapter at the FFN (He et al.): reads the FFN input, adds to its output",
        "source": "§1.1 (adapter-transformers par_bn: reduction factor 2, mam init, scaling 1)",
        "learning_rate": 1e-3,
        "config": dict(
            ffn_mode="adapter", ffn_option="parallel",
            ffn_adapter_layernorm_option="none", ffn_adapter_init_option="lora", ffn_adapter_scalar=1.0,
            reduction_factor=2,
        ),
    },
    "scaled_parallel": {
        "summary": "Scaled parallel adapter at the FFN, s = 4 (He et al.'s FFN scaled PA)",
        "source": "§3.3 (ffn adapter / parallel / LN none / lora init / scalar 4 / r = 512 on d = 1024) and §1.1 (rf 2)",
        "learning_rate": 1e-3,
        "config": dict(
            ffn_mode="adapter", ffn_option="parallel",
            ffn_adapter_layernorm_option="none", ffn_adapter_init_option="lora", ffn_adapter_scalar=4.0,
            reduction_factor=2,
        ),
    },
    "lora": {
        "summary": "LoRA on the query and value projections",
        "source": "§3.3 (r = 16, alpha 32, dropout 0.1, lora init) and §1.2",
        "learning_rate": 1e-3,
        "config": dict(attn_mode="lora", attn_bn=16, lora_alpha=32.0, lora_dropout=0.1, lora_init="lora"),
    },
    "prefix": {
        "summary": "Prefix tuning (Li & Liang) with the MLP reparameterisation, prefixes concatenated to K/V",
        "source": "§3.3 (prefix / concat / l = 200, mid_dim 800) and §1.3",
        # benchmarks/results/sweep_defaults/sweep.md (MiniLM, the reproduction's settings): at 1e-3 STS-B's output
        # collapses to a constant; at 3e-4 none does and SST-2 (80.5 vs 77.6) and WiC (58.0 vs 54.1) gain.
        "learning_rate": 3e-4,
        "config": dict(attn_mode="prefix", attn_option="concat", attn_bn=200, mid_dim=800),
    },
    "prefix_glue": {
        "summary": "Prefix tuning sized for sentence tasks: l = 30 (MAM's prefix), the head at 3e-3",
        "source": "§3.3 and §1.3; about 30 positions is He et al.'s 0.5 % prefix on RoBERTa-base (Table 2: "
                  "2·l·d·L = 0.5 % of 125 M at l = 34), where `prefix` is their summarisation setting",
        # On MiniLM `prefix` predicts CoLA's class 1 for every sentence: its 200 positions hide a 12-token
        # sentence from [CLS] (benchmarks/probe_cola.py) and its head at 3e-4 stays at the majority class.
        # With both changed it reads CoLA (MCC 7.46) and its grid mean is above `prefix`'s
        # (benchmarks/results/sweep_head_rate/summary.md).
        "learning_rate": 3e-4,
        "head_learning_rate": 3e-3,
        "config": dict(attn_mode="prefix", attn_option="concat", attn_bn=30, mid_dim=800),
    },
    "prompt_tuning": {
        "summary": "Prompt tuning: learned embeddings prepended to the (encoder) input",
        "source": "§3.3 (prompt_tuning, l = 200)",
        # The sweep: at 3e-2 one class on SST-2 and WiC and a constant on STS-B; at 3e-3 WiC and STS-B learn but
        # SST-2 still gets one class (also at 1e-2), until the prompt starts from sampled token embeddings
        # (Lester et al.'s initialisation): SST-2 71.33.
        "learning_rate": 3e-3,
        "config": dict(attn_mode="prompt_tuning", attn_bn=200, prompt_init="vocab"),
    },
    "bitfit": {
        "summary": "BitFit: train every bias of the backbone (as a stored bias delta)",
        "source": "§3.2 (attn_mode bitfit trains every parameter whose name contains 'bias')",
        "learning_rate": 1e-3,
        "config": dict(attn_mode="bitfit"),
    },
    "mam": {
        "summary": "Mix-and-match adapter: prefix (l = 30) + FFN scaled parallel adapter (r = 512, s = 4)",
        "source": "§3.3 (MAM, XSum/en-ro flags)",
        # The sweep: at 1e-3 MAM predicts one class on SST-2 and WiC and a constant on STS-B; at 1e-4 it learns
        # SST-2 (78.9) and WiC (58.0). On sentence tasks, mam_glue is the GLUE-sized variant.
        "learning_rate": 1e-4,
        "config": dict(
            attn_mode="prefix", attn_option="concat", attn_bn=30, mid_dim=800,
            ffn_mode="adapter", ffn_option="parallel", ffn_bn=512,
            ffn_adapter_layernorm_option="none", ffn_adapter_init_option="lora", ffn_adapter_scalar=4.0,
        ),
    },
    "mam_glue": {
        "summary": "MAM adapter, GLUE variant of the released script: prefix l = 16 + scaled PA r = 16, s = 2",
        "source": "§3.3 (MAM adapter, GLUE script)",
        # The sweep: at 1e-3 one class on WiC and a constant on STS-B; at 3e-4 SST-2 82.1, WiC 59.7, no collapse.
        "learning_rate": 3e-4,
        # At 3e-4 the head stays at CoLA's majority class for the grid's 2 epochs; at 3e-3 it reads CoLA
        # (MCC 7.95) and the grid's mean over its seven tasks rises by 0.88 points, though SST-2 loses 2.06
        # (benchmarks/results/sweep_head_rate/summary.md, MiniLM).
        "head_learning_rate": 3e-3,
        "config": dict(
            attn_mode="prefix", attn_option="concat", attn_bn=16, mid_dim=800,
            ffn_mode="adapter", ffn_option="parallel", ffn_bn=16,
            ffn_adapter_layernorm_option="none", ffn_adapter_init_option="lora", ffn_adapter_scalar=2.0,
        ),
    },
    "proadapter": {
        "summary": "ProAdapter (ProPETL): one Pfeiffer adapter shared by all layers, each layer keeps half of it by a learned mask",
        "source": "§2.2 and §2.5 (reduction factor 12, keep 0.5, mask lr 3e-3, weight decay 0.1 on scores)",
        # One prototype serves every layer, each through half of its entries; at the same short budget it
        # needs twice the adapter's rate (MiniLM, 2 epochs: STS-B 77.48 at 1e-3, 82.29 at 2e-3 against pfeiffer's
        # 82.18; SST-2 81.54 -> 83.37 against 83.03; benchmarks/results/propetl_quality*_cpu.md).
        "learning_rate": 2e-3,
        "config": dict(
            ffn_mode="adapter", ffn_option="pfeiffer",
            ffn_adapter_layernorm_option="none", ffn_adapter_init_option="bert", ffn_adapter_scalar=1.0,
            reduction_factor=12, adapter_act="relu",
            param_source="masked_prototype", mask_keep=0.5, mask_learning_rate=3e-3, mask_weight_decay=0.1,
        ),
    },
    "prolora": {
        "summary": "ProLoRA (ProPETL): one LoRA pair per projection (q, v) shared by all layers, 10 % kept per layer",
        "source": "§2.3 and §2.5 (r 32, alpha 48, keep 0.1, mask lr 3e-2)",
        "learning_rate": 1e-3,
        "config": dict(attn_mode="lora", attn_bn=32, lora_alpha=48.0, lora_dropout=0.0, lora_init="lora",
                       param_source="masked_prototype", mask_keep=0.1, mask_learning_rate=3e-2, mask_weight_decay=0.1),
    },
    "proprefix": {
        "summary": "ProPrefix (ProPETL): one generated prefix shared by all layers, 10 % kept per layer",
        "source": "§2.4 and §2.5 (l 64, MLP width 512, keep 0.1, mask lr 1e-4)",
        "learning_rate": 1e-3,
        "config": dict(attn_mode="prefix", attn_option="concat", attn_bn=64, mid_dim=512,
                       param_source="masked_prototype", mask_keep=0.1, mask_learning_rate=1e-4, mask_weight_decay=0.1),
    },
    "diffprune": {
        "summary": "Diff pruning: L0-gated diff on every backbone weight, projected to 0.5 %, then fine-tuned with the mask fixed",
        "source": "§4.1-4.3 (structured gates, l=-1.5, r=1.5, alpha 5, lambda 1.25e-7, gate lr 0.1, fixed-mask lr 5e-5)",
        # The L0 stage's diff w (gates: gate_learning_rate; fixed-mask stage: fixmask_learning_rate).
        "learning_rate": 1e-5,
        "config": dict(param_source="gated_diff", diff_density=0.005, l0_penalty=1.25e-7, gate_init=5.0,
                       gate_limits=(-1.5, 1.5), gate_structured=True, gate_learning_rate=0.1,
                       fixmask_learning_rate=5e-5),
    },
    "diffprune_short": {
        "summary": "Diff pruning at rates for short budgets (a few epochs): the paper's close almost every gate there",
        "source": "§4 with the rates of benchmarks/results/diffprune_quality_gates_cpu.md (MiniLM, SST-2 4,000 "
                  "examples, 2 epochs: 82.91 % against full's 84.63 %; the paper's rates 50.92 %)",
        "learning_rate": 1e-4,
        "config": dict(param_source="gated_diff", diff_density=0.005, l0_penalty=1.25e-7, gate_init=5.0,
                       gate_limits=(-1.5, 1.5), gate_structured=True, gate_learning_rate=1e-2,
                       projection_gates="expected", fixmask_learning_rate=1e-3),
    },
    "full": {
        "summary": "Full fine-tuning baseline: every backbone weight and the head are trained and stored",
        "source": "baseline",
        "learning_rate": 5e-5,
        "config": dict(full_finetune=True),
    },
    # Stage 2 of transfer learning over frozen Pfeiffer source adapters (ALGORITHMS.md §5; built with
    # unipetl.transfer.get_transfer_model, which fills in the sources and their bottleneck size).
    "scalearn": _over_sources(
        "scalearn", "ScaLearn: frozen source adapters combined by learned scales, one per layer, source and dimension",
        "§5.2 (omega ~ N(2/N, 0.001), dropout 0.3 on omega, lr 6e-3)", 6e-3, omega_dropout=0.3),
    "scalearn_uniform": _over_sources(
        "scalearn_uniform", "ScaLearnUniform: one scale per layer and source", "§5.2", 6e-3, omega_dropout=0.3),
    "scalearn_pp": _over_sources(
        "scalearn_pp", "ScaLearn++: one (sources x dimension) set of scales shared by every layer", "§5.2", 6e-3,
        omega_dropout=0.3),
    "scalearn_uniform_pp": _over_sources(
        "scalearn_uniform_pp", "ScaLearnUniform++: one scale per source, shared by every layer (no dropout on omega)",
        "§5.2", 6e-3, omega_dropout=0.0),
    "adapterfusion": _over_sources(
        "adapterfusion", "AdapterFusion (Pfeiffer et al. 2021): attention over the source adapters' outputs, the baseline",
        "§5.3 (value initialised to the identity, 0.01 * ||I - V||^2 in the loss, dropout 0.1, lr 5e-5)", 5e-5),
}


# Stage-2 presets: they attach over source adapters, not to a backbone alone.
TRANSFER_PRESETS = tuple(name for name, row in PRESETS.items() if row.get("needs_sources"))


def default_learning_rate(preset: str | None) -> float:
    """The preset's learning rate for `unipetl train` (override with --learning-rate). Full fine-tuning
    needs a small rate; the PETL methods train few, freshly initialised parameters and take larger ones
    (He et al. §3.5 use 1e-4 over 10 epochs; the short default runs here need more per step)."""
    return PRESETS[preset]["learning_rate"] if preset in PRESETS else 1e-3


def default_head_learning_rate(preset: str | None) -> float | None:
    """The rate of the task head (and of a trained BERT pooler) for `unipetl train` where the preset sets
    one (override with --head-learning-rate); None: the head trains at the method's rate."""
    return PRESETS[preset].get("head_learning_rate") if preset in PRESETS else None


def list_presets(transfer: bool = False) -> list[str]:
    """Names of the presets that attach to a backbone alone, in the order of the table above; with
    ``transfer``, also the stage-2 presets that attach over source adapters."""
    return [name for name in PRESETS if transfer or name not in TRANSFER_PRESETS]
