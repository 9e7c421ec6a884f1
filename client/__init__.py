"""Client side of the trading sidecar: a non-blocking `emit`.

Importing this package loads pyzmq and orjson only.

    from client import Client
    sidecar = Client()
    sidecar.emit("webhook.post", {"text": "filled 1 lot"}, key="alerts")
"""

from .core import Client, EmitError
from .wire import KINDS, default_endpoint

__all__ = ["KINDS", "Client", "EmitError", "default_endpoint"]
