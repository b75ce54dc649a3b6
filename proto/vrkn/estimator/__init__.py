"""Generated gRPC/protobuf code for the estimation service (see scripts/gen_proto.sh)."""
