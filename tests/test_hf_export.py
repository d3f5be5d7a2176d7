"""Export to Hugging Face: AutoModelForCausalLM loads the folder and gives our logits."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_model, tiny_model_config
from metapretrain import checkpoint as ckpt
from metapretrain.config.load import run_config_from_dict
from metapretrain.model.decoder import Decoder

transformers = pytest.importorskip("transformers")

SIZE = {"d_model": 48, "n_heads": 6, "ffn_hidden": 96, "max_seq_len": 128}
CFG = tiny_model_config(300, **SIZE)


def _perturbed(model: Decoder) -> Decoder:
    # Non-trivial norm gains, so a wrong norm mapping cannot go unnoticed.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()


def test_llama_logits_equal_ours():
    from metapretrain.model.hf import to_llama

    torch.manual_seed(0)
    ours = _perturbed(Decoder(CFG))
    hf = to_llama(ours)
    x = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        a, b = ours(x), hf(input_ids=x).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()


def _checkpoint(tmp_path, tokenizer_dir=None):
    run = tmp_path / "run"
    cfg = run_config_from_dict({"model": tiny_model(**SIZE)})
    torch.manual_seed(1)
    model = _perturbed(Decoder(CFG))
    info = ckpt.save_checkpoint(run, 7, model=model, state={}, config=cfg.to_dict(), tokens=0, flops=0.0)
    return run, info, model


def _tokenizer(path):
    from metapretrain.data.tokenizer import train_bpe

    texts = ["the quick brown fox jumps over the lazy dog"] * 50 + ["hello world, hello there"] * 50
    tok = train_bpe(iter(texts), vocab_size=300, min_frequency=1)
    tok.save(str(path))
    return tok


def test_export_folder_loads_with_auto_classes(tmp_path):
    from metapretrain.checkpoint.export import main

    run, info, model = _checkpoint(tmp_path)
    (run / "pretrain").mkdir(exist_ok=True)
    tok = _tokenizer(run / "pretrain" / "tokenizer.json")
    out = tmp_path / "hf"
    assert main(["--checkpoint", str(info.path), "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is False
    assert (config["hidden_size"], config["num_key_value_heads"], config["intermediate_size"]) == (48, 2, 96)

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    x = torch.randint(0, 300, (2, 33))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=x).logits, model(x), atol=1e-5, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "hello the lazy fox"
    assert hf_tok(text)["input_ids"] == tok.encode(text).ids
    assert hf_tok.eos_token == "<|endoftext|>"

    # Exporting again replaces the folder.
    assert main(["--checkpoint", str(info.path), "--out", str(out)]) == 0


def test_export_of_a_damaged_checkpoint_fails_clearly(tmp_path, capsys):
    from metapretrain.checkpoint.export import main

    _, info, _ = _checkpoint(tmp_path)
    (info.path / "model.safetensors").write_bytes(b"garbage")
    assert main(["--checkpoint", str(info.path), "--out", str(tmp_path / "hf")]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
