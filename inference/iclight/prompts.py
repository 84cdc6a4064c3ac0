"""Prompt encoding as IC-Light's reference does it: 75-token chunks, concatenated.

CLIP sees at most 77 tokens. The reference cuts a long prompt into 75-token pieces, wraps each
in start/end tokens, pads with the end token, encodes every piece, and lays the pieces side by
side on the sequence axis; the shorter of the positive and negative prompts is repeated to the
longer's number of pieces, so both have the same sequence length.
"""

from __future__ import annotations

import math
import threading

import torch
from transformers import CLIPTextModel, CLIPTokenizer

# A fast tokenizer may reconfigure its Rust state (truncation, padding) inside a call, and
# concurrent calls then fail with "Already borrowed": tokenizing is serialised (it is cheap).
_TOKENIZER_LOCK = threading.Lock()


def _chunk_ids(tokenizer: CLIPTokenizer, text: str) -> list[list[int]]:
    max_length = int(tokenizer.model_max_length)
    chunk_length = max_length - 2
    start, end = int(tokenizer.bos_token_id), int(tokenizer.eos_token_id)
    with _TOKENIZER_LOCK:
        tokens: list[int] = tokenizer(text, truncation=False, add_special_tokens=False)["input_ids"]
    chunks = [
        [start, *tokens[i : i + chunk_length], end] for i in range(0, len(tokens), chunk_length)
    ]
    # An empty text (a blank negative prompt) gets one piece of only start and end tokens;
    # the reference would fail on it.
    if not chunks:
        chunks = [[start, end]]
    return [chunk + [end] * (max_length - len(chunk)) for chunk in chunks]


def encode_chunks(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, text: str) -> torch.Tensor:
    """One text's hidden states, one row per 75-token piece: (pieces, 77, hidden)."""
    ids = torch.tensor(_chunk_ids(tokenizer, text), dtype=torch.int64, device=text_encoder.device)
    hidden: torch.Tensor = text_encoder(ids).last_hidden_state
    return hidden


def encode_prompt_pair(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, positive: str, negative: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) embeddings, each (1, 77·pieces, hidden) with equal piece counts."""
    cond = encode_chunks(tokenizer, text_encoder, positive)
    uncond = encode_chunks(tokenizer, text_encoder, negative)
    pieces = max(len(cond), len(uncond))
    cond = torch.cat([cond] * math.ceil(pieces / len(cond)), dim=0)[:pieces]
    uncond = torch.cat([uncond] * math.ceil(pieces / len(uncond)), dim=0)[:pieces]
    return cond.reshape(1, -1, cond.shape[-1]), uncond.reshape(1, -1, uncond.shape[-1])
