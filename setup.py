"""Build the optional C extension; setup.cfg holds the metadata.

`client._fastemit` (client/_fastemit.c) is `Client.emit`'s common case and the
sidecar's binary record decoder in C. It is optional: a machine without a C
compiler or Python's headers still installs, and `client` then runs its
pure-Python path (it logs which path runs, once, at import). Big-endian
hosts skip it too: the C code writes the ring's little-endian fields natively.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.byteorder == "little" and sys.implementation.name == "cpython":
    ext_modules.append(Extension("client._fastemit", ["client/_fastemit.c"], optional=True,
                                 extra_compile_args=["-O2", "-std=gnu11", "-Wall"]))

setup(ext_modules=ext_modules)
