"""The built-in scripted model (`serve --demo`, tests, benchmarks)."""

from bridge.demo.model import DEMO_MODEL_ID, DemoModel

__all__ = ["DEMO_MODEL_ID", "DemoModel"]
