"""The model zoo: models built as users build them (HF transformers, tied and shared weights, RNNs,
parametrizations, frozen backbones, torch.compile, BatchNorm, custom batch losses), each checked against an
independent reference (tests/zoo/reference.py) on every evaluator path."""
