"""Answering `predict(texts)`: loading a model from its source, the padded and packed forward passes, decoding.

Serving never imports textclf.training (an import contract in pyproject.toml checks it).
"""
