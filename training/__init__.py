"""Pure-PyTorch models, federated local training, update compression and aggregation (the train issue)."""
