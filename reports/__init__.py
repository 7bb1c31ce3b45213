"""Reports: figures and documents drawn from results stores only (never from a loaded model)."""
