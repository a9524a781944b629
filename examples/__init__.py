"""Worked examples of your own model and dataset (docs/custom_model_and_dataset.md).

A regular package, so ``examples.tiny_net`` imported from the repository root is this folder
even where some installed distribution ships a top-level ``examples`` package of its own.
"""
