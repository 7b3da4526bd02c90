"""The protocol-neutral data plane between the transports and the models."""
