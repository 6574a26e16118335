"""The metering proxy: the mitmproxy addon, its recorder process and the embedded runner."""
