"""Data: Fashion-MNIST's files, other IDX folders and image folders (with their import cache), image
decoding and photo preprocessing."""
