"""Offline training: datasets, occlusion synthesis, synthetic renderer, trainer, evaluation."""
