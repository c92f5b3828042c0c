"""Header views and builders over memoryview, and the Internet checksum."""
