"""The T5 student shared by training and serving: architectures, tokenizer, export, decoding."""
