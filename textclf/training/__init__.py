"""Fine-tuning and scoring the classifiers: datasets, recipes, the training loop, metrics, model cards.

Training writes the adapter files that textclf.serving loads, and re-loads them through it to measure them.
"""
