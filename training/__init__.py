"""Pure-PyTorch models, federated local training, update compression and aggregation (the train issue).

Import from the modules (`training.local.train_local`, `training.compress.compress`, `training.verify`, …): three
of them share their main function's name, so re-exporting those here would hide the modules. docs/training.md
describes the package.
"""
