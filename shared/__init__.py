"""GoBalancer's common package: config, models, the Redis state model, logging, the launcher."""
