"""`tfprod serve`: a TF-Serving-compatible model server (REST + gRPC)."""
