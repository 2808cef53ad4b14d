"""Evaluation: perplexity of any checkpoint at any TP/PP and an EleutherAI lm-eval adapter."""
