"""The mesh: drives protocol.swim over a transport; the delegate seam, discovery, queries."""
