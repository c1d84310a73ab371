"""Data preparation: raw multilingual text -> tokenizer -> tokenized MDS shards + manifest."""
