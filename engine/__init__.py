"""Demixer's engine: decode, model store, core surgery, STFT, backends, streaming separator.

Never imports Qt or `app` (enforced by tests/engine/test_import_contract.py).
"""

__version__ = "0.1.0"
