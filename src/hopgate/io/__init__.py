"""The thin I/O around the pipeline: AF_PACKET sockets, interface preparation, the loop."""
