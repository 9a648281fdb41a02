"""Trust: the secure endpoint (sign/verify over any transport) and the node's key store."""
