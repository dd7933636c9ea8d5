"""What the proxy tells about itself: Prometheus metrics, the access log, W3C trace context and OTLP spans."""
