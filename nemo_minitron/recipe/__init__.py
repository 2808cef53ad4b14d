"""The Minitron recipe: teacher correction, iterative prune -> distill, evaluation and export."""
