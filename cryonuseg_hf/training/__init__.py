"""Pretraining, fold training, the cross-validation and the shipped model."""
