"""Reading tokens: the words behind a language-codebook tokenizer's tokens."""
