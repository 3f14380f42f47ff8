"""Tiny random-initialised backbones of every supported family, built from configs in code (no downloads)."""

import torch
import transformers as T

FAMILIES = ("bert", "roberta", "mpnet", "t5", "bart")
ENCODERS = ("bert", "roberta", "mpnet")
# Every model type the site table claims, one tiny model each: XLM-R (roberta family), mT5 and T5 v1.1
# (t5 family, gated FFN: wi_0 and wi_1) and mBART (bart family). The contract suite runs over all of them.
CONTRACT_FAMILIES = ("bert", "roberta", "mpnet", "t5", "bart", "xlmr", "mt5", "mbart", "t5v11", "llama", "qwen2",
                     "mistral", "qwen3", "gpt2")
SEQ2SEQ = ("t5", "bart", "mt5", "mbart", "t5v11")
# Decoder-only language models (causal-LM head): grouped-query attention (2 key/value heads for 4 query heads).
CAUSAL = ("llama", "qwen2", "mistral", "qwen3", "gpt2")
HIDDEN, LAYERS, HEADS, FFN, VOCAB = 32, 2, 4, 64, 120
# Presets whose defaults are sized for real models (200 prefix positions through an 800-wide MLP, a
# 512-wide adapter), cut down for the tiny ones; every other preset runs as it is.
SMALL_PRESET_SIZES = {"prefix": dict(attn_bn=5, mid_dim=12), "prefix_glue": dict(attn_bn=5, mid_dim=12),
                      "prompt_tuning": dict(attn_bn=5), "mam": dict(attn_bn=4, ffn_bn=16, mid_dim=12),
                      "mam_glue": dict(mid_dim=12), "proprefix": dict(attn_bn=5, mid_dim=12)}


def _t5_sizes():
    return dict(d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=LAYERS, num_heads=HEADS,
                decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, vocab_size=VOCAB)


def _bart_sizes():
    return dict(d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
                decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, max_position_embeddings=128,
                vocab_size=VOCAB)


def _encoder_sizes(num_labels):
    return dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
                num_labels=num_labels, vocab_size=VOCAB)


def _decoder_sizes():
    return dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS // 2,
                intermediate_size=FFN, vocab_size=VOCAB, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                eos_token_id=2, tie_word_embeddings=False)


def tiny_model(family: str, num_labels: int = 3, seed: int = 0):
    """A tiny model with sequence-classification (encoders) or generation (T5/BART families) head, in eval mode."""
    torch.manual_seed(seed)
    if family == "bert":
        model = T.BertForSequenceClassification(T.BertConfig(**_encoder_sizes(num_labels)))
    elif family == "roberta":
        model = T.RobertaForSequenceClassification(T.RobertaConfig(pad_token_id=1, **_encoder_sizes(num_labels)))
    elif family == "xlmr":
        model = T.XLMRobertaForSequenceClassification(T.XLMRobertaConfig(pad_token_id=1, **_encoder_sizes(num_labels)))
    elif family == "mpnet":
        model = T.MPNetForSequenceClassification(T.MPNetConfig(**_encoder_sizes(num_labels)))
    elif family == "t5":
        model = T.T5ForConditionalGeneration(T.T5Config(**_t5_sizes()))
    elif family == "t5v11":  # T5 v1.1: gated-GELU FFN (wi_0, wi_1), untied LM head
        model = T.T5ForConditionalGeneration(T.T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                                        **_t5_sizes()))
    elif family == "mt5":  # MT5Config defaults to the gated-GELU FFN and an untied LM head
        model = T.MT5ForConditionalGeneration(T.MT5Config(**_t5_sizes()))
    elif family == "bart":
        model = T.BartForConditionalGeneration(T.BartConfig(**_bart_sizes()))
    elif family == "mbart":
        model = T.MBartForConditionalGeneration(T.MBartConfig(**_bart_sizes()))
    elif family == "llama":
        model = T.LlamaForCausalLM(T.LlamaConfig(**_decoder_sizes()))
    elif family == "qwen2":  # Qwen2: biases on q, k and v (and none elsewhere)
        model = T.Qwen2ForCausalLM(T.Qwen2Config(**_decoder_sizes()))
    elif family == "mistral":  # sliding-window attention
        model = T.MistralForCausalLM(T.MistralConfig(sliding_window=4, **_decoder_sizes()))
    elif family == "qwen3":  # RMS norms on each head's queries and keys
        model = T.Qwen3ForCausalLM(T.Qwen3Config(**_decoder_sizes()))
    elif family == "gpt2":  # Conv1D projections, q, k and v fused in c_attn, an LM head tied to the embeddings
        model = T.GPT2LMHeadModel(T.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, vocab_size=VOCAB,
                                               n_positions=128, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    else:
        raise ValueError(family)
    return model.eval()


def tiny_batch(family: str, batch: int = 3, length: int = 7, seed: int = 1, num_labels: int = 3):
    """Inputs with padding in one row, and labels (target token ids for the seq2seq families), for the tiny
    model of ``family``."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[0, -2:] = 0
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if family in SEQ2SEQ:
        out["labels"] = torch.randint(5, VOCAB, (batch, 4), generator=g)
    elif family in CAUSAL:  # next-token targets: the inputs themselves, padding ignored
        out["labels"] = input_ids.masked_fill(attention_mask == 0, -100)
    else:
        out["labels"] = torch.randint(0, num_labels, (batch,), generator=g)
    return out


def logits(model, batch):
    """Output logits without labels (eval mode, no grad)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if "labels" in batch and batch["labels"].dim() == 2:
        inputs["labels"] = batch["labels"]  # seq2seq needs decoder inputs; loss is ignored (causal LMs too)
    with torch.no_grad():
        return model(**inputs).logits


def save_tiny_llama(folder, tokenizer, seed: int = 0, family: str = "llama"):
    """A saved tiny Llama causal LM (2 layers, grouped-query attention, tied embeddings), or GPT-2 LM with
    family="gpt2", with ``tokenizer`` (its vocabulary sizes the model): a stand-in for a real decoder in
    end-to-end runs."""
    torch.manual_seed(seed)
    if family == "gpt2":
        config = T.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, vocab_size=len(tokenizer),
                              n_positions=256, pad_token_id=tokenizer.pad_token_id)
        T.GPT2LMHeadModel(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder
    config = T.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                           num_key_value_heads=HEADS // 2, intermediate_size=FFN, vocab_size=len(tokenizer),
                           max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    T.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
