"""Customer notices: the outbox (written with each change), their content, providers and delivery."""
