"""Kernels beneath the energies: softmax/logsumexp with exact derivative rules, CPU-friendly batched products,
blockwise (chunked) attention, and the choice between dense, chunked and fused evaluation."""
