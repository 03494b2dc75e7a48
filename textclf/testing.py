"""Tiny random BERT classifiers saved like hub checkpoints, without the network: textclf's tests and the app's build theirs here."""

from __future__ import annotations

import json
from pathlib import Path

TINY_SENTIMENT_LABELS = ["negative", "positive"]
TINY_EMOTION_LABELS = ["joy", "anger", "fear", "neutral"]

WORDS = [
    "good",
    "great",
    "gorgeous",
    "witty",
    "film",
    "movie",
    "bad",
    "awful",
    "boring",
    "dull",
    "plot",
    "acting",
    "love",
    "hate",
    "the",
    "a",
    "an",
    "is",
    "was",
    "not",
    "very",
    "so",
    "and",
    "but",
    "it",
    "this",
    "that",
    "happy",
    "sad",
    "angry",
    "joy",
    "fear",
    "surprise",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_save(directory: Path, *, labels: list[str], multi_label: bool = False, seed: int = 0) -> Path:
    """A 2-layer, 32-wide random BERT classifier with its tokenizer, saved like a hub checkpoint."""
    import torch  # noqa: PLC0415 (torch loads lazily: only the tiny models need it)
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer  # noqa: PLC0415 (transformers loads lazily: only the tiny models need it)

    directory.mkdir(parents=True, exist_ok=True)
    tokens = SPECIAL + WORDS
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    # transformers 5's BertTokenizer takes the vocabulary itself: given only vocab_file, it knows the special tokens alone.
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if multi_label:
        (directory / "thresholds.json").write_text(json.dumps({label: 0.5 for label in labels}))
    return directory
