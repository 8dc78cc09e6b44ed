"""Defed: edge-feature-enhanced denoiser ensembles that detect adversarial images.

A pure library: tensors in, tensors out. No MQTT, SQL or asyncio here.
"""

from defed_core.bundle import Bundle, BundleError, InputError
from defed_core.calibration import Calibration
from defed_core.ensemble import Decision

__all__ = ["Bundle", "BundleError", "Calibration", "Decision", "InputError"]
