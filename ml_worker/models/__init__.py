"""Networks and their weights: LiteMedSAM, checkpoint loading, device choice."""
