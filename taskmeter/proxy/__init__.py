"""What runs on the proxy's event loop: the mitmproxy addons, the stream tee,
routing, and the embedded runner. Finished calls leave through taskmeter.handover."""
