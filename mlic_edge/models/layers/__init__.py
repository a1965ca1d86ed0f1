"""Reusable building blocks shared by the zoo models."""
