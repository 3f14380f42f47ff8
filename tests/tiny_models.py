"""Tiny random-initialised backbones of every supported family, built from configs in code (no downloads)."""

import torch
import transformers as T

FAMILIES = ("bert", "roberta", "mpnet", "t5", "bart")
ENCODERS = ("bert", "roberta", "mpnet")
HIDDEN, LAYERS, HEADS, FFN, VOCAB = 32, 2, 4, 64, 120


def tiny_model(family: str, num_labels: int = 3, seed: int = 0):
    """A tiny model with sequence-classification (encoders) or generation (T5/BART) head, in eval mode."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB)
    if family == "bert":
        config = T.BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                              intermediate_size=FFN, num_labels=num_labels, **common)
        model = T.BertForSequenceClassification(config)
    elif family == "roberta":
        config = T.RobertaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                 intermediate_size=FFN, num_labels=num_labels, pad_token_id=1, **common)
        model = T.RobertaForSequenceClassification(config)
    elif family == "mpnet":
        config = T.MPNetConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                               intermediate_size=FFN, num_labels=num_labels, **common)
        model = T.MPNetForSequenceClassification(config)
    elif family == "t5":
        config = T.T5Config(d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=LAYERS, num_heads=HEADS,
                            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **common)
        model = T.T5ForConditionalGeneration(config)
    elif family == "bart":
        config = T.BartConfig(d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                              encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                              decoder_ffn_dim=FFN, max_position_embeddings=128, **common)
        model = T.BartForConditionalGeneration(config)
    else:
        raise ValueError(family)
    return model.eval()


def tiny_batch(family: str, batch: int = 3, length: int = 7, seed: int = 1, num_labels: int = 3):
    """Inputs with padding in one row, and labels, for the tiny model of ``family``."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, -2:] = 0
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if family in ("t5", "bart"):
        out["labels"] = torch.randint(5, VOCAB, (batch, 4), generator=g)
    else:
        out["labels"] = torch.randint(0, num_labels, (batch,), generator=g)
    return out


def logits(model, batch):
    """Output logits without labels (eval mode, no grad)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if "labels" in batch and batch["labels"].dim() == 2:
        inputs["labels"] = batch["labels"]  # seq2seq needs decoder inputs; loss is ignored
    with torch.no_grad():
        return model(**inputs).logits
