"""Greedy generation over a batch whose rows belong to different tasks (a decoder's task bank).

Rows are padded on the left and given explicit positions (0 at each row's first token), so each row sees
exactly the positions and keys it would alone; the KV cache carries the rows' tokens from step to step
while the bank's routing keeps each row on its task's parts (LoRA, adapters, prefixes, sparse diffs).
A row stops at an end-of-sequence token or at its own token limit; the batch stops when every row has.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_rows(base, lm_head, config, contexts: list[list[int]], limits: list[int], eos_ids: set[int],
                pad_id: int, prepare=None) -> list[list[int]]:
    """New token ids per row (its end-of-sequence token included when reached). ``base`` runs the decoder
    stack with the mixed ops installed, ``lm_head`` maps its last hidden states to the vocabulary;
    ``prepare`` changes the first forward's inputs (prompt tuning puts its prompt in front of each row)."""
    from transformers import DynamicCache

    device = next(base.parameters()).device
    rows, longest = len(contexts), max(len(c) for c in contexts)
    input_ids = torch.full((rows, longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(rows, longest, dtype=torch.long, device=device)
    for i, context in enumerate(contexts):
        input_ids[i, longest - len(context):] = torch.tensor(context, device=device)
        mask[i, longest - len(context):] = 1
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    if prepare is not None:
        inputs = prepare(inputs)
        mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=config)
    generated: list[list[int]] = [[] for _ in range(rows)]
    done = [limit <= 0 for limit in limits]
    for _ in range(max(limits, default=0)):
        hidden = base(**inputs, position_ids=positions, cache=cache, use_cache=True).last_hidden_state
        next_ids = lm_head(hidden[:, -1]).argmax(-1)
        for i, token in enumerate(next_ids.tolist()):
            if not done[i]:
                generated[i].append(token)
                done[i] = token in eos_ids or len(generated[i]) >= limits[i]
        if all(done):
            break
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
        inputs = {"input_ids": next_ids[:, None], "attention_mask": mask}
        positions = positions[:, -1:] + 1
    return generated
