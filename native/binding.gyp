{
  "targets": [
    {
      "target_name": "osr_sparse",
      "sources": ["sparse.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
