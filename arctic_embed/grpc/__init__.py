"""gRPC transport: servicers that only translate protobuf ↔ core calls, and the server assembly."""
