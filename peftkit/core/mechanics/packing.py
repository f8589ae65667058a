"""Padding-free batches: a batch's rows packed end to end, attention kept within each row.

A padded batch of B rows costs B × (its longest row) tokens of arithmetic whatever the rows hold; on data of
very different lengths much of it is padding. Packed, the rows are laid end to end into as few rows as hold
them, each as long as the batch's longest row or 256 tokens, whichever is more (first-fit decreasing), their
position ids restarting at 0 at each row's first token; what is left at the end of a packed row is padding of
its own, with its own positions.
A model whose attention builds its mask from those position ids (transformers' ``create_causal_mask`` does
when no attention mask is given: a block-diagonal causal mask; flash attention reads the same boundaries as
variable-length sequences) then computes for every row exactly what it computes for the row alone, so the
loss — the mean over the batch's trained tokens — and its gradients equal the padded batch's. Packing into
rows of that length, rather than into one row of Σ ℓᵢ tokens, keeps attention's cost (quadratic in a row's
length where the mask is dense) near the padded batch's.

A bidirectional encoder (BERT-style tagging) gets the same from an explicit block-diagonal attention mask of
shape [rows, 1, L, L] (``EncoderPackingCollator``), which transformers passes to the attention as it is.

Not every model keeps rows apart: ``keeps_rows_apart`` checks the model itself, once, by comparing the logits of
two rows packed with those of each row alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
SHORTEST_PACKED_ROW = 256  # short rows share packed rows of up to this many tokens (attention over 256 is cheap)
PROBE_ROWS = (5, 4)  # the lengths of the two rows packed by ``keeps_rows_apart``


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """The indices of ``lengths`` grouped into bins of at most ``capacity``, longest first, each into the first
    bin with room (first-fit decreasing)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        place = next((b for b, free in enumerate(room) if free >= lengths[index]), None)
        if place is None:
            bins.append([])
            room.append(capacity)
            place = len(bins) - 1
        bins[place].append(index)
        room[place] -= lengths[index]
    return bins


class PackingCollator:
    """A causal LM's rows (``input_ids``, ``labels``) packed as the module docstring says: input ids, labels
    (−100 at each row's first token, which no earlier token of the packed row may learn to predict, and on the
    padding) and position ids, each [packed rows, longest row]. Counts the tokens it packs and those a padded
    batch would have held."""

    shifted_labels = True  # a label is predicted from the tokens before it
    keys = ("input_ids", "labels")  # what each row brings

    def __init__(self, pad_token_id: int = 0, one_row: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.one_row = one_row  # flash attention: every row in one (its packed form takes a batch of one)
        self.tokens = 0
        self.padded_tokens = 0
        self.packed_tokens = 0

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return self.pack(features, self.capacity([len(feature["input_ids"]) for feature in features]))

    def capacity(self, lengths: list[int]) -> int:
        """The longest packed row: all the rows for ``one_row``, else the longest row or 256 tokens."""
        return sum(lengths) if self.one_row else max(*lengths, SHORTEST_PACKED_ROW)

    def pack(self, features: list[dict], capacity: int) -> dict[str, torch.Tensor]:
        """``features`` packed into rows of at most ``capacity`` tokens (at least the longest row's length), as
        long as the fullest of them."""
        lengths = [len(feature["input_ids"]) for feature in features]
        bins = first_fit(lengths, capacity)
        capacity = max(sum(lengths[i] for i in members) for members in bins)
        self.tokens += sum(lengths)
        self.padded_tokens += len(lengths) * max(lengths)
        self.packed_tokens += len(bins) * capacity
        keys = [key for key in self.keys if key in features[0]]
        fill = {"input_ids": self.pad_token_id, "token_type_ids": 0, "labels": IGNORE}
        batch = {key: [] for key in [*keys, "position_ids", "segments"]}
        for members in bins:
            packed = {key: [] for key in batch}
            for segment, index in enumerate(members):
                for key in keys:
                    values = list(features[index][key])
                    if key == "labels" and self.shifted_labels:
                        values[0] = IGNORE
                    packed[key] += values
                packed["position_ids"] += range(lengths[index])
                packed["segments"] += [segment] * lengths[index]
            padding = capacity - len(packed["position_ids"])
            for key in keys:
                packed[key] += [fill[key]] * padding
            packed["position_ids"] += range(padding)
            packed["segments"] += [len(members)] * padding
            for key, values in packed.items():
                batch[key].append(values)
        tensors = {key: torch.tensor(values) for key, values in batch.items()}
        return self.finish(tensors, tensors.pop("segments"))

    def finish(self, batch: dict[str, torch.Tensor], segments: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch as the model takes it (a decoder reads the rows' boundaries from the position ids)."""
        return batch

    def describe(self) -> str:
        """What packing saved, for the run's summary."""
        if not self.padded_tokens:
            return "padding-free (each batch's rows packed end to end, attention within each row)"
        saved = 1 - self.packed_tokens / self.padded_tokens
        return (f"padding-free: {self.tokens:,} tokens packed into {self.packed_tokens:,} positions where padded "
                f"batches would have held {self.padded_tokens:,} ({100 * saved:.0f}% less)")


class EncoderPackingCollator(PackingCollator):
    """For a bidirectional encoder: rows of input ids, token type ids and labels (kept as they are: a token's
    own label) packed the same way, with a block-diagonal attention mask added to the attention scores — 0 within
    a row, the float32 minimum across rows (the form both sdpa and eager attention take)."""

    shifted_labels = False
    keys = ("input_ids", "token_type_ids", "labels")

    def finish(self, batch: dict[str, torch.Tensor], segments: torch.Tensor) -> dict[str, torch.Tensor]:
        across = segments[:, :, None] != segments[:, None, :]
        mask = torch.zeros(across.shape).masked_fill(across, torch.finfo(torch.float32).min)
        batch["attention_mask"] = mask[:, None]
        return batch


def packed_log_likelihoods(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """log p(token) of every trained token of a packed batch. The LM head runs only at the positions that
    predict a trained token in some packed row (``logits_to_keep`` as indices), not over the whole vocabulary at
    every position."""
    labels = batch["labels"]
    predicting = labels[:, 1:] != IGNORE  # position p predicts the token at p + 1
    positions = predicting.any(0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                   logits_to_keep=positions).logits.float()
    wanted = predicting[:, positions]
    targets = labels[:, positions + 1][wanted]
    return -F.cross_entropy(logits[wanted], targets, reduction="none")


def packed_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The mean cross-entropy over the trained tokens of a packed batch (0 when it has none)."""
    log_probs = packed_log_likelihoods(model, batch)
    return -log_probs.sum() / max(len(log_probs), 1)


@torch.no_grad()
def keeps_rows_apart(model: torch.nn.Module, token_ids: list[int], collate: PackingCollator, **forward) -> bool:
    """Whether ``model`` computes each row of a batch packed by ``collate`` as it computes the row alone: rows cut
    from ``token_ids`` (at least 9 tokens) packed — two sharing a packed row, a third in a row of its own unless
    ``collate`` packs one row — against each alone, in evaluation mode (no dropout); ``forward``: further
    arguments of the model's forward (``use_cache=False`` for a causal LM)."""
    rows = [token_ids[:PROBE_ROWS[0]], token_ids[PROBE_ROWS[0]:sum(PROBE_ROWS)], token_ids[:sum(PROBE_ROWS)]]
    lengths = [len(ids) for ids in rows]
    capacity = sum(lengths) if collate.one_row else max(lengths)
    device = next(model.parameters()).device

    def logits(indices: list[int], capacity: int) -> torch.Tensor:
        features = [{"input_ids": rows[i], "labels": rows[i], "token_type_ids": [0] * lengths[i]} for i in indices]
        batch = {key: value.to(device) for key, value in collate.pack(features, capacity).items() if key != "labels"}
        return model(**batch, **forward).logits.float()

    was_training = model.training
    model.eval()
    try:
        alone = [logits([i], lengths[i])[0] for i in range(len(rows))]
        packed = logits(list(range(len(rows))), capacity)
    finally:
        model.train(was_training)
    expected = torch.zeros_like(packed)
    real = torch.zeros(packed.shape[:2], dtype=torch.bool, device=device)  # a packed row's padding: not compared
    for row, members in enumerate(first_fit(lengths, capacity)):
        start = 0
        for index in members:
            expected[row, start:start + lengths[index]] = alone[index]
            real[row, start:start + lengths[index]] = True
            start += lengths[index]
    # rounding alone separates the two in float32 by ~1e-7 of the logits' scale, in 16-bit by ~1e-3
    tolerance = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    difference = (packed - expected)[real].abs().max()
    return bool(difference <= tolerance * expected[real].abs().max().clamp(min=1.0))
