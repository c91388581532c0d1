{
  "targets": [
    {
      "target_name": "osr_sparse",
      "sources": ["sparse.c", "seal.c"],
      "include_dirs": ["<!(node -p \"require('path').join(require('path').dirname(require.resolve('xxhash-addon/package.json')), 'xxHash')\")"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
