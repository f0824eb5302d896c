"""The write side: readers turn source files into normalised records, load writes them."""
