"""Prompt tuning (Lester et al. 2021): l learned embeddings prepended to the (encoder) input.

The backbone then sees l more positions: the attention mask and token types are extended. A head
with one output per input position (a span or token head, per the head table of sites.py) reads the
input positions only: the prompt's are dropped from the backbone's output before the head, so its
logits, targets and loss are over the input tokens, as without a prompt.
"""

from __future__ import annotations

import torch

from ..forms import PromptEmbedding
from ..registry import register_method
from ..sites import head_table
from .base import Method


@register_method("attn_mode", "prompt_tuning")
class PromptTuning(Method):
    exports = ("prompt",)

    def attach(self) -> None:
        embed_dim = self.host.model.get_input_embeddings().embedding_dim
        self.register("prompt", PromptEmbedding(self.config.attn_bn, embed_dim))
        if head_table(self.host.model).per_position_outputs:
            self.host.add_hook(self.host.model.base_model.register_forward_hook(self._drop_prompt_positions))

    def _drop_prompt_positions(self, module, args, outputs):
        n = self.prompt.embedding.shape[0]
        if isinstance(outputs, tuple):
            return (outputs[0][:, n:], *outputs[1:])
        outputs["last_hidden_state"] = outputs["last_hidden_state"][:, n:]
        return outputs

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
        batch, length = embeds.shape[:2]
        n = self.prompt.embedding.shape[0]
        kwargs["inputs_embeds"] = self.prompt(embeds)
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)
        if kwargs.get("token_type_ids") is not None:
            tt = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([tt.new_zeros(batch, n), tt], dim=1)
        return kwargs
