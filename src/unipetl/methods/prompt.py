"""Prompt tuning (Lester et al. 2021): l learned embeddings prepended to the (encoder) input.

The backbone then sees l more positions: the attention mask and token types are extended. A head
with one output per input position (a span or token head, or a causal LM's, per the head table of
sites.py) reads the input positions only: the prompt's are dropped from the backbone's output before
the head, so its logits, targets and loss are over the input tokens, as without a prompt. A decoder
generating with a KV cache sees the prompt once, in its first forward; later forwards read it from the
cache.
"""

from __future__ import annotations

import torch

from ..forms import PromptEmbedding
from ..mixing import MixedOp, pad_to
from ..registry import register_method
from ..sites import head_table
from .base import Method


class PromptOp(MixedOp):
    """Prompts of many tasks in one batch: each row becomes [its task's prompt, its tokens, padding], so
    its tokens keep the positions 0 + l_t ... they have in its single-task model, and the head's first
    position is its own prompt's first (or its [CLS] where the task has no prompt). Prompts of different
    lengths leave masked padding at the end of the row. Heads that read the first position (encoders'
    classification and regression heads) find it in place; a decoder's label words are read at a position
    shifted by the row's prompt length (``row_lengths``)."""

    row_lengths: torch.Tensor | None = None  # each row's prompt length in the batch last prepared

    def prepare_inputs(self, kwargs: dict, embed) -> dict:
        self.row_lengths = None
        if not self.active_tasks():
            return kwargs  # no prompt in this batch
        kwargs = dict(kwargs)
        embeds = embed(kwargs.pop("input_ids"))
        rows, length, width = embeds.shape
        prompts = {t: self.parts[t].embedding.to(embeds.dtype) for t in self.active_tasks()}
        longest = max(p.shape[0] for p in prompts.values())
        zero = embeds.new_zeros(longest, width)
        stacked = torch.stack([pad_to(prompts[t], (longest, width)) if t in prompts else zero
                               for t in self.routing.present])[self.routing.slot]
        lengths = torch.tensor([prompts[t].shape[0] if t in prompts else 0 for t in self.routing.present],
                               device=embeds.device)[self.routing.slot]
        self.row_lengths = lengths
        # Position j of a row reads prompt position j (j < l_t), else token j - l_t, else padding.
        position = torch.arange(longest + length, device=embeds.device)[None].expand(rows, -1)
        in_prompt = position < lengths[:, None]
        token = (position - lengths[:, None]).clamp(0, length - 1)
        in_tokens = ~in_prompt & (position - lengths[:, None] < length)
        prompt_index = position.clamp(max=longest - 1)
        gathered_prompt = stacked.gather(1, prompt_index[..., None].expand(-1, -1, width))
        gathered_tokens = embeds.gather(1, token[..., None].expand(-1, -1, width))
        kwargs["inputs_embeds"] = torch.where(in_prompt[..., None], gathered_prompt,
                                              gathered_tokens * in_tokens[..., None].to(embeds.dtype))
        mask = kwargs.get("attention_mask")
        mask = torch.ones(rows, length, dtype=torch.long, device=embeds.device) if mask is None else mask
        kwargs["attention_mask"] = torch.where(in_prompt, 1, mask.gather(1, token) * in_tokens).to(mask.dtype)
        if kwargs.get("token_type_ids") is not None:
            types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.where(in_tokens, types.gather(1, token), 0).to(types.dtype)
        return kwargs


@register_method("attn_mode", "prompt_tuning")
class PromptTuning(Method):
    exports = ("prompt",)

    def attach(self) -> None:
        embeddings = self.host.model.get_input_embeddings()
        prompt = self.register("prompt", PromptEmbedding(self.config.attn_bn, embeddings.embedding_dim))
        if self.config.prompt_init == "vocab":  # Lester et al.: start from the embeddings of sampled tokens
            tokens = torch.randint(0, embeddings.num_embeddings, (self.config.attn_bn,))
            with torch.no_grad():
                prompt.embedding.copy_(embeddings.weight[tokens])
        self.part(PromptOp, "", "prompt", self.host.methods["prompt"])
        if head_table(self.host.model).per_position_outputs:
            self.host.add_hook(self.host.model.base_model.register_forward_hook(self._drop_prompt_positions,
                                                                                with_kwargs=True))

    def _drop_prompt_positions(self, module, args, kwargs, outputs):
        hidden = outputs[0] if isinstance(outputs, tuple) else outputs["last_hidden_state"]
        # With a KV cache (a decoder generating), only the forward whose positions start at 0 holds the prompt.
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.2x calls it `cache`
        start = cache.get_seq_length() - hidden.shape[1] if hasattr(cache, "get_seq_length") else 0
        n = max(0, self.prompt.embedding.shape[0] - start)
        if isinstance(outputs, tuple):
            return (hidden[:, n:], *outputs[1:])
        outputs["last_hidden_state"] = hidden[:, n:]
        return outputs

    def finish_generation(self, kwargs: dict, sequences: torch.Tensor) -> torch.Tensor:
        # A decoder given embeddings returns the new tokens only: the caller's input ids go in front, as
        # generate() gives them for every other method.
        input_ids = kwargs.get("input_ids")
        if input_ids is None or self.host.model.config.is_encoder_decoder:
            return sequences
        return torch.cat([input_ids, sequences], dim=1)

    @property
    def prompt(self) -> PromptEmbedding:
        return self.host.methods["prompt"]

    def prepare_inputs(self, kwargs: dict) -> dict:
        kwargs = dict(kwargs)
        input_ids, embeds = kwargs.pop("input_ids", None), kwargs.pop("inputs_embeds", None)
        if embeds is None:
            if input_ids is None:
                raise ValueError("prompt tuning needs input_ids or inputs_embeds")
            embeds = self.host.model.get_input_embeddings()(input_ids)
        if kwargs.get("position_ids") is not None:
            raise ValueError("prompt tuning shifts positions; do not pass position_ids")
        # A multiple-choice batch is (batch, choices, length): every choice gets the prompt, as a row does.
        *lead, length, width = embeds.shape
        n = self.prompt.embedding.shape[0]
        kwargs["inputs_embeds"] = self.prompt(embeds.reshape(-1, length, width)).reshape(*lead, n + length, width)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(*lead, length, dtype=torch.long, device=embeds.device)
        kwargs["attention_mask"] = torch.cat([mask.new_ones(*lead, n), mask], dim=-1)
        if kwargs.get("token_type_ids") is not None:
            tt = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([tt.new_zeros(*lead, n), tt], dim=-1)
        return kwargs
