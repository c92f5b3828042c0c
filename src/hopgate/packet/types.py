"""Type aliases shared by the packet layer."""

from typing import TypeAlias

# What the packet layer reads from: any contiguous byte buffer.
Buffer: TypeAlias = bytes | bytearray | memoryview
