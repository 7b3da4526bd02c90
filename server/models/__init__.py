"""The model manager: which models are loaded, in which state, serving which version."""
