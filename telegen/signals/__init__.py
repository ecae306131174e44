"""Builders that turn typed records into OTLP protobuf messages with semantic-convention names."""
