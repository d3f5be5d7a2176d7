"""Our Decoder as a Hugging Face `LlamaForCausalLM` (the export is metapretrain.checkpoint.export).

Our decoder is the Llama architecture with the same parameter layout, and
our RoPE rotates the two halves of each head (x1, x2 = chunk(2)) exactly as
transformers' `rotate_half`, so q/k projections map over unpermuted. The
export is a folder `AutoModelForCausalLM.from_pretrained` loads: config.json,
model.safetensors, generation_config.json and the tokenizer files.
"""

from __future__ import annotations

from pathlib import Path

# Our parameter name suffix -> transformers' (per layer "layers.{i}." prefix kept).
_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.gate_proj.weight": "mlp.gate_proj.weight",
    "ffn.up_proj.weight": "mlp.up_proj.weight",
    "ffn.down_proj.weight": "mlp.down_proj.weight",
}


def llama_config(cfg, special_tokens: dict[str, int] | None = None):
    """A `transformers.LlamaConfig` equal to our `ModelConfig`."""
    from transformers import LlamaConfig

    eos = (special_tokens or {}).get("eos")
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=None, use_cache=True,
    )


def to_hf_state_dict(state: dict) -> dict:
    """Our Decoder state dict -> LlamaForCausalLM's names (same tensors, no permutation)."""
    out = {}
    for name, tensor in state.items():
        if name == "embed.weight":
            out["model.embed_tokens.weight"] = tensor
        elif name == "norm.weight":
            out["model.norm.weight"] = tensor
        elif name == "lm_head.weight":
            out["lm_head.weight"] = tensor
        elif name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            if rest not in _LAYER_MAP:
                raise KeyError(f"no Llama equivalent for parameter {name!r}")
            out[f"model.layers.{idx}.{_LAYER_MAP[rest]}"] = tensor
        else:
            raise KeyError(f"no Llama equivalent for parameter {name!r}")
    return out


def to_llama(model, special_tokens: dict[str, int] | None = None):
    """A `LlamaForCausalLM` (fp32, eval mode) holding our Decoder's weights."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(llama_config(model.cfg, special_tokens))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model.state_dict()), strict=False)
    # Rotary inv_freq buffers are computed by transformers and are not weights.
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto LlamaForCausalLM (missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]})")
    return hf.eval()


def save_tokenizer(tokenizer_json: Path, out: Path, special_tokens: dict[str, int]) -> None:
    from transformers import PreTrainedTokenizerFast

    from metapretrain.data.tokenizer import EOS, MASK

    kwargs = {}
    if "eos" in special_tokens:
        kwargs.update(eos_token=EOS, bos_token=EOS, unk_token=None)
    if "mask" in special_tokens:
        kwargs["mask_token"] = MASK
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), **kwargs)
    tok.save_pretrained(str(out))
