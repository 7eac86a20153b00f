"""Tasks: how a kind of model is built and how its inputs are prepared. One module per task, no base classes."""
