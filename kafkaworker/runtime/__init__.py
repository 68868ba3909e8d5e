"""The runtime: threads, sockets and signals. Pure decisions live in offsets, lanes and retry."""
